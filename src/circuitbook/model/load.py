"""Load a checkpoint (local HF-format directory or hub id) into a :class:`Model`, and save one back."""

from __future__ import annotations

from ..errors import CircuitbookError

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from .checkpoint import CheckpointError, check_finite, check_safetensors, check_shapes
from .config import ConfigError, ModelConfig, parse_hf_config, read_config
from .forward import Intervention, log_probs, run
from .tokenizer import Tokenizer
from .weights import Weights, from_hf_state_dict, to_hf_state_dict

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class ModelLoadError(CircuitbookError, RuntimeError):
    """The source could not be turned into a model (missing files, offline and not cached, ...)."""


@dataclasses.dataclass
class Model:
    """A loaded model: arch-neutral weights, its tokenizer and where it came from.

    ``source`` is what the user asked for (a path or hub id); ``path`` the local directory it lives in.
    """

    weights: Weights
    tokenizer: Tokenizer | None
    source: str
    path: Path | None = None

    @property
    def cfg(self) -> ModelConfig:
        return self.weights.cfg

    def run(self, tokens: Tensor, taps: Iterable[str] = ("logits",),
            interventions: dict[str, Intervention] | None = None, lengths: Tensor | None = None) -> dict[str, Tensor]:
        """:func:`.forward.run` (``lengths``: real lengths of a right-padded batch, computed packed)."""
        return run(self.weights, tokens.to(self.weights.device), taps, interventions, lengths)

    def log_probs(self, tokens: Tensor, interventions=None) -> Tensor:
        return log_probs(self.weights, tokens.to(self.weights.device), interventions)

    def to_tokens(self, text: str, bos: bool = True) -> Tensor:
        """[1, pos] ids; with ``bos`` the story separator comes first, as in training."""
        ids = self.tokenizer.encode(text)
        if bos and self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        return torch.tensor([ids], dtype=torch.long)

    def with_weights(self, weights: Weights) -> "Model":
        return dataclasses.replace(self, weights=weights)

    def fingerprint(self) -> str:
        """A short content hash of the weights: identifies the model in the book.

        Independent of the thread count: the checksum is numpy's (sequential, pairwise) float64 sum, not
        torch's, whose parallel reduction order — and so the last digits — changes with ``torch.get_num_threads``
        (a book written by a 2-thread run was refused by a 1-thread one for 'another model')."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        for k, t in sorted(self.weights.tensors().items()):
            flat = t.detach().float().flatten().numpy()
            h.update(k.encode())
            h.update(flat[:: max(1, flat.size // 4096)].tobytes())
            h.update(repr(float(flat.astype("float64").sum())).encode())
        return h.hexdigest()[:16]


def _read_state_dict(path: Path, cfg: ModelConfig | None = None) -> dict[str, Tensor]:
    """Every tensor of the checkpoint in ``path``; with ``cfg``, each file's header, sizes and shapes are
    checked against it first (model/checkpoint.py), so a bad file is one clear error, never a traceback."""
    st = sorted(path.glob("*.safetensors"))
    if st:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        shapes = {}
        for f in st:
            shapes.update(check_safetensors(f))
        if cfg is not None:
            check_shapes(cfg, shapes, st[0] if len(st) == 1 else path)
        sd: dict[str, Tensor] = {}
        for f in st:
            try:
                sd.update(load_file(str(f)))
            except (SafetensorError, OSError, RuntimeError) as e:  # corrupt beyond what the header shows
                raise CheckpointError(f"{f} cannot be read: {str(e).splitlines()[0]}") from None
        return sd
    binf = path / "pytorch_model.bin"
    if binf.exists():
        try:
            sd = torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, not a pickle, unsafe pickle: all bad input
            raise CheckpointError(f"{binf} cannot be read (truncated or not a PyTorch checkpoint): "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise CheckpointError(f"{binf} does not hold a state dict of tensors")
        if cfg is not None:
            check_shapes(cfg, {k: tuple(v.shape) for k, v in sd.items()}, binf)
        return sd
    raise ModelLoadError(f"{path} has no model.safetensors or pytorch_model.bin")


def _resolve(source: str) -> Path:
    """A local directory, or a hub id fetched through huggingface_hub (honours HF_HUB_OFFLINE and the cache)."""
    p = Path(source).expanduser()
    if p.is_dir():
        return p
    if p.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"{source!r} is not a model directory (need config.json + weights) nor a hub id "
                             f"like 'roneneldan/TinyStories-1Layer-21M'")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError as e:  # pragma: no cover
        raise ModelLoadError(f"huggingface_hub is needed to fetch {source!r}: {e}") from None
    patterns = ["config.json", *_TOKENIZER_FILES, "*.safetensors"]
    try:
        local = Path(snapshot_download(source, allow_patterns=patterns))
        if not list(local.glob("*.safetensors")):  # older repos ship only the pickle
            local = Path(snapshot_download(source, allow_patterns=patterns + ["pytorch_model.bin"]))
    except Exception as e:  # offline, not cached, unknown repo, network error
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = ("HF_HUB_OFFLINE is set and the model is not in the local cache"
                if offline else "could not download it (no network?) and it is not in the local cache")
        if isinstance(e, HfHubHTTPError) and getattr(e.response, "status_code", None) == 404:
            hint = "no such repository on the hub"
        raise ModelLoadError(f"cannot load {source!r}: {hint}. ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return local


# compute dtypes by the names the CLI and shard specs use
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def load_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Model:
    """Load GPT-Neo, GPT-2 or Llama from an HF-format directory or a hub id.

    >>> m = load_model("roneneldan/TinyStories-1Layer-21M")   # needs internet or the HF cache
    """
    path = _resolve(str(source))
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json")
    cfg = read_config(path / "config.json")
    sd = _read_state_dict(path, cfg)
    check_finite(sd, path)
    weights = from_hf_state_dict(cfg, sd, dtype=dtype).to(device=device)
    if weights.W_E.shape != (cfg.d_vocab, cfg.d_model):
        raise ConfigError(f"embedding is {tuple(weights.W_E.shape)} but config says "
                          f"vocab {cfg.d_vocab} x d_model {cfg.d_model}")
    tok = None
    try:
        tok = Tokenizer.from_dir(path, cfg.bos_token_id)
    except FileNotFoundError:
        warnings.warn(f"{path} has no tokenizer files; pass token ids directly", stacklevel=2)
    except Exception as e:  # a corrupt tokenizer.json / vocab.json: the tokenizers library's own error types
        raise ModelLoadError(f"{path}: the tokenizer files cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if tok is not None and tok.vocab_size > cfg.d_vocab:
        raise ModelLoadError(f"{path}: the tokenizer has {tok.vocab_size} tokens but the model only "
                             f"{cfg.d_vocab} (config.json vocab_size)")
    return Model(weights, tok, str(source), path)


def from_hf_model(hf_model, tokenizer: Tokenizer | None = None, source: str = "<in-memory>") -> Model:
    """Wrap an in-memory transformers model (used by the parity tests and notebooks)."""
    cfg = parse_hf_config(hf_model.config.to_dict())
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    return Model(from_hf_state_dict(cfg, sd), tokenizer, source)


def save_hf(model_or_weights: Model | Weights, out_dir: str | Path, tokenizer_from: Path | None = None) -> Path:
    """Write an HF checkpoint (config.json + model.safetensors, plus tokenizer files if known) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` loads."""
    from safetensors.torch import save_file

    weights = model_or_weights.weights if isinstance(model_or_weights, Model) else model_or_weights
    if isinstance(model_or_weights, Model) and tokenizer_from is None:
        tokenizer_from = model_or_weights.path
    sd, hf_cfg = to_hf_state_dict(weights.to(dtype=torch.float32, device="cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")  # atomic: never a half-written checkpoint
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if tokenizer_from is not None:
        for f in _TOKENIZER_FILES:
            if (Path(tokenizer_from) / f).exists():
                (out / f).write_bytes((Path(tokenizer_from) / f).read_bytes())
    return out
