"""Check a checkpoint's files against its config before anything is loaded.

``check_safetensors(path)`` reads only a ``.safetensors`` file's header (8-byte little-endian length + JSON)
and checks that it parses and that every tensor's byte range lies inside the file and matches its dtype x
shape: a truncated or corrupt file is one :class:`CheckpointError` naming the file, not a library traceback.
``expected_shapes(cfg, names)`` is the shape of every Hugging Face tensor ``weights.from_hf_state_dict``
reads, from the config alone; ``check_shapes`` compares it with the file's shapes and names the first
mismatch (or missing tensor). ``check_finite`` refuses NaN / inf weights, naming the tensor.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from ..errors import CircuitbookError
from .config import ModelConfig

# bytes per element of every safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class CheckpointError(CircuitbookError, ValueError):
    """A weights file that is truncated, corrupt or does not fit its config.json."""


def check_safetensors(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Validate one file's header and sizes; return {tensor name: shape}."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path} is truncated or not a safetensors file: its header claims {n:,} bytes "
                                  f"but the file has {size:,}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a safetensors file: unreadable header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file: the header is not a JSON object")
    data = size - 8 - n
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            width = DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if end > data:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {8 + n + end:,} but the file "
                                  f"has {size:,}")
        if not 0 <= begin <= end or end - begin != width * math.prod(shape):
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype} {list(shape)}) should take "
                                  f"{width * math.prod(shape):,} bytes but its header gives {end - begin:,}")
        shapes[name] = shape
    return shapes


def expected_shapes(cfg: ModelConfig, names) -> dict[str, tuple[int, ...]]:
    """{HF tensor name: shape} for every tensor ``from_hf_state_dict`` reads (``names``: those present,
    which decide GPT-2's optional "transformer." prefix and whether an lm_head is read)."""
    names = {k.removeprefix("module.") for k in names}
    V, d, m, L = cfg.d_vocab, cfg.d_model, cfg.d_mlp, cfg.n_layers
    he, kve = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    out: dict[str, tuple[int, ...]] = {}
    if cfg.arch == "gpt_neo":
        p = "transformer."
        out.update({p + "wte.weight": (V, d), p + "wpe.weight": (cfg.n_ctx, d), p + "ln_f.weight": (d,),
                    p + "ln_f.bias": (d,)})
        for l in range(L):
            q, a = f"{p}h.{l}.", f"{p}h.{l}.attn.attention."
            out.update({a + "q_proj.weight": (he, d), a + "k_proj.weight": (he, d), a + "v_proj.weight": (he, d),
                        a + "out_proj.weight": (d, he), a + "out_proj.bias": (d,),
                        q + "mlp.c_fc.weight": (m, d), q + "mlp.c_fc.bias": (m,),
                        q + "mlp.c_proj.weight": (d, m), q + "mlp.c_proj.bias": (d,)})
            out.update({q + f"ln_{i}.{w}": (d,) for i in (1, 2) for w in ("weight", "bias")})
    elif cfg.arch == "gpt2":
        p = "transformer." if "transformer.wte.weight" in names else ""
        out.update({p + "wte.weight": (V, d), p + "wpe.weight": (cfg.n_ctx, d), p + "ln_f.weight": (d,),
                    p + "ln_f.bias": (d,)})
        for l in range(L):
            q = f"{p}h.{l}."
            out.update({q + "attn.c_attn.weight": (d, 3 * d), q + "attn.c_attn.bias": (3 * d,),
                        q + "attn.c_proj.weight": (he, d), q + "attn.c_proj.bias": (d,),
                        q + "mlp.c_fc.weight": (d, m), q + "mlp.c_fc.bias": (m,),
                        q + "mlp.c_proj.weight": (m, d), q + "mlp.c_proj.bias": (d,)})
            out.update({q + f"ln_{i}.{w}": (d,) for i in (1, 2) for w in ("weight", "bias")})
    else:  # llama
        out.update({"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)})
        for l in range(L):
            q, a = f"model.layers.{l}.", f"model.layers.{l}.self_attn."
            out.update({a + "q_proj.weight": (he, d), a + "k_proj.weight": (kve, d), a + "v_proj.weight": (kve, d),
                        a + "o_proj.weight": (d, he), q + "input_layernorm.weight": (d,),
                        q + "post_attention_layernorm.weight": (d,), q + "mlp.up_proj.weight": (m, d),
                        q + "mlp.gate_proj.weight": (m, d), q + "mlp.down_proj.weight": (d, m)})
    if "lm_head.weight" in names and not cfg.tie_embeddings:
        out["lm_head.weight"] = (V, d)
    return out


def check_shapes(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str | Path) -> None:
    """Refuse weights that do not fit the config, naming the first missing tensor or wrong shape."""
    have = {k.removeprefix("module."): tuple(v) for k, v in shapes.items()}
    want = expected_shapes(cfg, have)
    missing = [k for k in want if k not in have]
    if missing:
        raise CheckpointError(f"{where} lacks {len(missing)} tensor(s) a {cfg.arch} model with this config.json "
                              f"needs, first {missing[0]!r}")
    for k, shape in want.items():
        if have[k] != shape:
            raise CheckpointError(f"{where}: tensor {k!r} is {list(have[k])} but config.json (d_model {cfg.d_model}, "
                                  f"d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab}, {cfg.n_heads} heads) needs {list(shape)}")
    if "lm_head.weight" not in want and not cfg.tie_embeddings:
        raise CheckpointError(f"{where} has no lm_head.weight and config.json says tie_word_embeddings is false")


def check_finite(sd: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse NaN or infinite weights (every analysis would be NaN), naming the first such tensor."""
    for k, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {k!r} holds NaN or infinite values")
