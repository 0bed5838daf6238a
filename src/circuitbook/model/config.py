"""Architecture-neutral model config, parsed from a Hugging Face ``config.json`` by hand.

We parse config.json ourselves instead of going through ``transformers.AutoConfig`` because the
TinyStories GPT-Neo checkpoints carry configs that transformers 5.x rejects (a 1-layer model whose
``attention_types`` describes two layers). We keep what is unambiguous, warn about what we repaired,
and raise ``ConfigError`` for real contradictions.
"""

from __future__ import annotations

from ..errors import CircuitbookError

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

ARCHS = ("gpt_neo", "gpt2", "llama")


class ConfigError(CircuitbookError, ValueError):
    """A config.json that cannot describe a model we can run."""


@dataclasses.dataclass
class ModelConfig:
    """Everything the forward pass needs to know, whatever the source architecture.

    ``attn_types[l]`` is "global" or "local"; local layers attend to the previous ``window`` tokens
    (self included), as GPT-Neo does. ``attn_scale`` divides the QK scores: sqrt(d_head) for GPT-2 and
    Llama, 1.0 for GPT-Neo (it has no scaling).
    """

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str  # "gelu_new" | "gelu" | "relu" | "silu"
    norm: str  # "LN" (LayerNorm with bias) | "RMS"
    eps: float
    attn_scale: float
    attn_types: list[str]
    window: int | None = None
    n_kv_heads: int | None = None  # grouped-query attention (Llama); None means n_heads
    gated_mlp: bool = False
    positional: str = "learned"  # "learned" | "rotary"
    rotary_base: float = 10000.0
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    hf_config: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("hf_config")
        return d


def _get(cfg: dict, *names: str, default: Any = KeyError) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if default is KeyError:
        raise ConfigError(f"config.json has none of {names}")
    return default


def _expand_attention_types(spec: list, n_layers: int) -> list[str]:
    """GPT-Neo's ``attention_types`` [[["global","local"], 2]] -> ["global","local","global","local"]."""
    out: list[str] = []
    try:
        for kinds, repeat in spec:
            out.extend(list(kinds) * int(repeat))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot read attention_types {spec!r}: {e}") from None
    bad = sorted(set(out) - {"global", "local"})
    if bad:
        raise ConfigError(f"attention_types names unknown kinds {bad}; expected 'global' or 'local'")
    if len(out) < n_layers:
        raise ConfigError(f"attention_types describes {len(out)} layers but num_layers is {n_layers}")
    if len(out) > n_layers:
        warnings.warn(
            f"attention_types describes {len(out)} layers but num_layers is {n_layers}; "
            f"using the first {n_layers}: {out[:n_layers]}",
            stacklevel=3,
        )
    return out[:n_layers]


def parse_hf_config(cfg: dict) -> ModelConfig:
    """Read a Hugging Face config dict for GPT-Neo, GPT-2 or Llama."""
    mt = cfg.get("model_type")
    if mt is None:
        archs = " ".join(cfg.get("architectures") or [])
        mt = {"GPTNeo": "gpt_neo", "GPT2": "gpt2", "Llama": "llama"}.get(
            next((k for k in ("GPTNeo", "GPT2", "Llama") if k in archs), ""), None
        )
    if mt not in ARCHS:
        raise ConfigError(f"unsupported model_type {mt!r}; circuitbook runs {', '.join(ARCHS)}")

    if mt == "gpt_neo":
        n_layers = int(_get(cfg, "num_layers", "n_layer"))
        d_model = int(_get(cfg, "hidden_size"))
        n_heads = int(_get(cfg, "num_heads"))
        if "attention_types" in cfg:
            types = _expand_attention_types(cfg["attention_types"], n_layers)
            layers = cfg.get("attention_layers")
            if layers and list(layers[:n_layers]) != types:
                raise ConfigError(f"attention_layers {layers} contradicts attention_types (expands to {types})")
        elif cfg.get("attention_layers"):
            types = list(cfg["attention_layers"])[:n_layers]
        else:
            types = ["global"] * n_layers
        act = cfg.get("activation_function", "gelu_new")
        return _checked(
            ModelConfig(
                arch="gpt_neo", n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                d_mlp=int(cfg.get("intermediate_size") or 4 * d_model), d_vocab=int(_get(cfg, "vocab_size")),
                n_ctx=int(cfg.get("max_position_embeddings", 2048)), act_fn=act, norm="LN",
                eps=float(cfg.get("layer_norm_epsilon", 1e-5)), attn_scale=1.0, attn_types=types,
                window=int(cfg.get("window_size", 256)), tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), hf_config=cfg,
            )
        )
    if mt == "gpt2":
        n_layers = int(_get(cfg, "n_layer", "num_hidden_layers"))
        d_model = int(_get(cfg, "n_embd", "hidden_size"))
        n_heads = int(_get(cfg, "n_head", "num_attention_heads"))
        d_head = d_model // n_heads
        if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn"):
            raise ConfigError("GPT-2 options scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
        return _checked(
            ModelConfig(
                arch="gpt2", n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head,
                d_mlp=int(cfg.get("n_inner") or 4 * d_model), d_vocab=int(_get(cfg, "vocab_size")),
                n_ctx=int(_get(cfg, "n_positions", "n_ctx", default=1024)),
                act_fn=cfg.get("activation_function", "gelu_new"), norm="LN",
                eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                attn_scale=float(d_head) ** 0.5 if cfg.get("scale_attn_weights", True) else 1.0,
                attn_types=["global"] * n_layers, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), hf_config=cfg,
            )
        )
    # llama
    n_layers = int(_get(cfg, "num_hidden_layers"))
    d_model = int(_get(cfg, "hidden_size"))
    n_heads = int(_get(cfg, "num_attention_heads"))
    d_head = int(cfg.get("head_dim") or d_model // n_heads)
    if cfg.get("rope_scaling"):
        raise ConfigError(f"rope_scaling {cfg['rope_scaling']!r} is not supported")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConfigError("Llama attention_bias / mlp_bias are not supported")
    rope = cfg.get("rope_parameters") or {}
    return _checked(
        ModelConfig(
            arch="llama", n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head,
            d_mlp=int(_get(cfg, "intermediate_size")), d_vocab=int(_get(cfg, "vocab_size")),
            n_ctx=int(cfg.get("max_position_embeddings", 2048)), act_fn=cfg.get("hidden_act", "silu"), norm="RMS",
            eps=float(cfg.get("rms_norm_eps", 1e-6)), attn_scale=float(d_head) ** 0.5,
            attn_types=["global"] * n_layers, n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            gated_mlp=True, positional="rotary",
            rotary_base=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"), hf_config=cfg,
        )
    )


def _checked(c: ModelConfig) -> ModelConfig:
    if c.n_layers < 1 or c.d_model < 1 or c.n_heads < 1 or c.d_vocab < 1:
        raise ConfigError(f"nonsensical sizes in config: {c.to_dict()}")
    if c.arch != "llama" and c.d_head * c.n_heads != c.d_model:
        raise ConfigError(f"hidden size {c.d_model} is not divisible by {c.n_heads} heads")
    if c.act_fn not in ("gelu_new", "gelu", "relu", "silu", "gelu_pytorch_tanh"):
        raise ConfigError(f"unsupported activation {c.act_fn!r}")
    if "local" in c.attn_types and not c.window:
        raise ConfigError("a local attention layer needs window_size > 0")
    return c


def read_config(path: str | Path) -> ModelConfig:
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    try:
        return parse_hf_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as e:  # e.g. "hidden_size": "big"
        raise ConfigError(f"{path}: a field has the wrong type or value ({type(e).__name__}: {e})") from None
