"""Dictionary files: SAELens 6 (save and load), circuit-tracer transcoders and EleutherAI sparsify (load).

SAELens 6 (a directory): ``cfg.json`` + ``sae_weights.safetensors`` with W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_out, d_in] (skip-transcoders), threshold [d_sae] (JumpReLU).
Architecture names as SAELens 6 writes them (``SAEConfig.architecture()``):

    kind \\ activation   relu                topk        jumprelu
    sae                 standard            topk        jumprelu
    transcoder          transcoder          topk (*)    jumprelu_transcoder
    skip-transcoder     skip_transcoder     -- (**)     jumprelu_skip_transcoder

(*) SAELens has no TopK transcoder; d_in = d_out here, so a TopK SAE with ``apply_b_dec_to_input = false``
computes exactly the transcoder's function; ``metadata.circuitbook_kind`` and ``hook_name`` /
``hook_name_out`` record what it reads and writes. (**) no SAELens architecture computes it: refused.
On load, ``apply_b_dec_to_input = true`` is folded into b_enc (b_enc - b_dec @ W_enc: the same function);
``normalize_activations`` other than "none" is refused.

circuit-tracer (``SingleLayerTranscoder.to_safetensors``, one .safetensors per layer): W_enc [d_sae, d_model]
(applied as F.linear, so transposed here), W_dec [d_sae, d_model], b_enc, b_dec, optional W_skip [d_model,
d_model] applied as x @ W_skip.T (SAELens's layout), ``activation_function.threshold`` (JumpReLU: x * (x >
threshold)) or ``k`` (TopK) else ReLU.

sparsify (a directory): ``cfg.json`` (k, num_latents, transcode, skip_connection, d_in, activation) +
``sae.safetensors`` with encoder.weight [num_latents, d_in] (transposed here), encoder.bias, W_dec
[num_latents, d_in], b_dec, optional W_skip [d_in, d_in] (x @ W_skip.mT). A non-transcoder subtracts b_dec
from its input (folded into b_enc); sparsify's ReLU-then-TopK equals TopK-then-ReLU.

Every reader checks the shapes and values and raises :class:`DictionaryError` naming the file and the
problem (truncated or corrupt weights, unknown architecture, wrong shapes, NaNs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from .config import DictionaryConfig, DictionaryError
from .model import Dictionary

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
FORMATS = ("saelens", "circuit-tracer", "sparsify")

_ARCH = {("sae", "relu"): "standard", ("sae", "topk"): "topk", ("sae", "jumprelu"): "jumprelu",
         ("transcoder", "relu"): "transcoder", ("transcoder", "topk"): "topk",
         ("transcoder", "jumprelu"): "jumprelu_transcoder", ("skip-transcoder", "relu"): "skip_transcoder",
         ("skip-transcoder", "jumprelu"): "jumprelu_skip_transcoder"}
_FROM_ARCH = {"standard": ("sae", "relu"), "topk": ("sae", "topk"), "jumprelu": ("sae", "jumprelu"),
              "transcoder": ("transcoder", "relu"), "jumprelu_transcoder": ("transcoder", "jumprelu"),
              "skip_transcoder": ("skip-transcoder", "relu"), "jumprelu_skip_transcoder": ("skip-transcoder", "jumprelu")}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DictionaryError(f"{path} does not exist")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise DictionaryError(f"{path}: expected a JSON object")
    return d


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """{name: tensor} from a .safetensors file (DictionaryError if missing, truncated or corrupt)."""
    from safetensors.torch import load_file

    if Path(path).is_dir():
        raise DictionaryError(f"{path} is a directory, not a .safetensors file")
    if not Path(path).is_file():
        raise DictionaryError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError / OSError on bad bytes
        raise DictionaryError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def tensors_from_bytes(blob: bytes, source: str) -> dict[str, Tensor]:
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as e:
        raise DictionaryError(f"{source}: weights are not a readable safetensors blob ({type(e).__name__})") from None


def tensors_to_bytes(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _layer_from_hook(name) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", str(name or ""))
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------- SAELens
def saelens_cfg(d: Dictionary, model_name: str = "") -> dict:
    c = d.cfg
    arch = _ARCH.get((c.kind, c.activation))
    if arch is None:
        raise DictionaryError(f"SAELens 6 has no architecture for a {c.activation} {c.kind}; "
                              f"train it with --l1 (ReLU) to export it in SAELens format")
    cfg = {"d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"model_name": model_name, "hook_name": c.reads, "hook_name_out": c.writes,
                        "hook_head_index": None, "circuitbook_kind": c.kind, "circuitbook_layer": c.layer},
           "architecture": arch}
    if arch == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    if "transcoder" in arch:
        cfg["d_out"] = c.d_out
    return cfg


def save_saelens(d: Dictionary, out_dir: str | Path, model_name: str = "") -> Path:
    """Write ``out_dir/cfg.json`` + ``out_dir/sae_weights.safetensors`` (atomically each)."""
    from safetensors.torch import save_file

    cfg = saelens_cfg(d, model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (SAELENS_WEIGHTS + ".tmp")
    save_file(d.tensors(), str(tmp))
    tmp.replace(out / SAELENS_WEIGHTS)
    (out / (SAELENS_CFG + ".tmp")).write_text(json.dumps(cfg, indent=1))
    (out / (SAELENS_CFG + ".tmp")).replace(out / SAELENS_CFG)
    return out


def load_saelens(path: str | Path, layer: int | None = None) -> Dictionary:
    """A SAELens 6 directory (cfg.json + sae_weights.safetensors) as a Dictionary."""
    p = Path(path)
    if not p.is_dir():
        raise DictionaryError(f"{p} is not a directory (a SAELens dictionary is cfg.json + sae_weights.safetensors)")
    cfg = _read_json(p / SAELENS_CFG)
    arch = cfg.get("architecture", "standard")
    if arch not in _FROM_ARCH:
        raise DictionaryError(f"{p / SAELENS_CFG}: unknown or unsupported architecture {arch!r} "
                              f"(supported: {', '.join(sorted(_FROM_ARCH))})")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise DictionaryError(f"{p / SAELENS_CFG}: normalize_activations={cfg['normalize_activations']!r} "
                              f"is not supported (only 'none')")
    kind, act = _FROM_ARCH[arch]
    meta = cfg.get("metadata") or {}
    if meta.get("circuitbook_kind") in ("transcoder", "skip-transcoder", "sae") and arch == "topk":
        kind = meta["circuitbook_kind"]
    if layer is None:
        layer = meta.get("circuitbook_layer", _layer_from_hook(meta.get("hook_name", cfg.get("hook_name"))))
    if layer is None:
        raise DictionaryError(f"{p / SAELENS_CFG} does not say which layer it reads; pass the layer")
    try:
        dcfg = DictionaryConfig(kind, int(layer), int(cfg["d_in"]), int(cfg["d_sae"]), act,
                                k=int(cfg["k"]) if act == "topk" else None, d_out=int(cfg.get("d_out", cfg["d_in"])))
    except (KeyError, TypeError, ValueError) as e:
        raise DictionaryError(f"{p / SAELENS_CFG}: missing or malformed field ({e})") from None
    t = read_safetensors(p / SAELENS_WEIGHTS)
    if "log_threshold" in t and "threshold" not in t:
        t["threshold"] = t.pop("log_threshold").exp()
    if cfg.get("apply_b_dec_to_input", False) and {"W_enc", "b_enc", "b_dec"} <= set(t):
        if t["b_dec"].shape[-1] != t["W_enc"].shape[0]:
            raise DictionaryError(f"{p}: apply_b_dec_to_input with b_dec {tuple(t['b_dec'].shape)} "
                                  f"not matching W_enc {tuple(t['W_enc'].shape)}")
        t["b_enc"] = t["b_enc"].float() - t["b_dec"].float() @ t["W_enc"].float()
    return Dictionary.from_tensors(dcfg, _only(t, dcfg), str(p / SAELENS_WEIGHTS))


def _only(t: dict[str, Tensor], dcfg: DictionaryConfig) -> dict[str, Tensor]:
    keep = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"W_skip"} if dcfg.skip else set()) | (
        {"threshold"} if dcfg.activation == "jumprelu" else set())
    return {k: v for k, v in t.items() if k in keep}


# ------------------------------------------------------------------------------------------- circuit-tracer
def load_circuit_tracer(path: str | Path, layer: int) -> Dictionary:
    """One circuit-tracer per-layer transcoder file (``layer_{i}.safetensors``) as a Dictionary."""
    p = Path(path)
    t = read_safetensors(p)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if name not in t:
            raise DictionaryError(f"{p}: not a circuit-tracer transcoder (no {name})")
    d_sae, d_model = t["W_enc"].shape
    if "activation_function.threshold" in t:
        act, k = "jumprelu", None
        thr = t["activation_function.threshold"].float()
        if (thr < 0).any():
            raise DictionaryError(f"{p}: negative JumpReLU thresholds (circuit-tracer's x * (x > t) is then not a "
                                  f"ReLU-based JumpReLU)")
    elif "k" in t:
        act, k = "topk", int(t["k"])
    else:
        act, k = "relu", None
    kind = "skip-transcoder" if "W_skip" in t else "transcoder"
    dcfg = DictionaryConfig(kind, layer, int(d_model), int(d_sae), act, k=k, d_out=int(t["W_dec"].shape[1]))
    out = {"W_enc": t["W_enc"].T, "b_enc": t["b_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if kind == "skip-transcoder":
        out["W_skip"] = t["W_skip"]
    if act == "jumprelu":
        out["threshold"] = t["activation_function.threshold"]
    return Dictionary.from_tensors(dcfg, out, str(p))


# ------------------------------------------------------------------------------------------- sparsify
def load_sparsify(path: str | Path, layer: int) -> Dictionary:
    """An EleutherAI sparsify directory (cfg.json + sae.safetensors) as a Dictionary."""
    p = Path(path)
    if not p.is_dir():
        raise DictionaryError(f"{p} is not a directory (a sparsify dictionary is cfg.json + sae.safetensors)")
    cfg = _read_json(p / SAELENS_CFG)
    if cfg.get("activation", "topk") != "topk":
        raise DictionaryError(f"{p / SAELENS_CFG}: unknown or unsupported sparsify activation {cfg.get('activation')!r} "
                              f"(supported: topk)")
    t = read_safetensors(p / SPARSIFY_WEIGHTS)
    for name in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if name not in t:
            raise DictionaryError(f"{p / SPARSIFY_WEIGHTS}: not a sparsify file (no {name})")
    n_lat, d_in = t["encoder.weight"].shape
    transcode = bool(cfg.get("transcode", False))
    skip = "W_skip" in t
    kind = "skip-transcoder" if skip else ("transcoder" if transcode else "sae")
    try:
        dcfg = DictionaryConfig(kind, layer, int(cfg.get("d_in", d_in)), int(n_lat), "topk", k=int(cfg["k"]),
                                d_out=int(t["W_dec"].shape[1]))
    except (KeyError, TypeError, ValueError) as e:
        raise DictionaryError(f"{p / SAELENS_CFG}: missing or malformed field ({e})") from None
    W_enc = t["encoder.weight"].float().T
    b_enc = t["encoder.bias"].float()
    if not transcode:
        b_enc = b_enc - t["b_dec"].float() @ W_enc
    out = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if skip:
        out["W_skip"] = t["W_skip"]
    return Dictionary.from_tensors(dcfg, out, str(p / SPARSIFY_WEIGHTS))


def load_dictionary(path: str | Path, fmt: str = "saelens", layer: int | None = None) -> Dictionary:
    """Load ``path`` in format ``fmt`` (one of FORMATS); ``layer`` is required where the file does not say."""
    if not Path(path).exists():
        raise DictionaryError(f"dictionary {path} does not exist")
    if fmt == "saelens":
        return load_saelens(path, layer)
    if fmt not in FORMATS:
        raise DictionaryError(f"unknown dictionary format {fmt!r} (known: {', '.join(FORMATS)})")
    if layer is None:
        raise DictionaryError(f"{fmt} files do not record their layer: pass it (--layer)")
    return load_circuit_tracer(path, layer) if fmt == "circuit-tracer" else load_sparsify(path, layer)
