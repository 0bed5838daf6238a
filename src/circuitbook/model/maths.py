"""The model's elementwise maths, defined once: norms, activations, next-token log-probabilities.

Every stage that re-applies a piece of the forward (the circuits basis, typing's input scores, handcraft
calibration, attribution through a frozen norm) imports it from here, so the analyses and the forward can
never drift apart. Norm kinds are ``cfg.norm``: "LN" (LayerNorm: centre, then divide by the RMS) or "RMS"
(RMSNorm: divide by the RMS). Activation names are ``cfg.act_fn`` (see ``model.config``).

    centre(x, kind)               LayerNorm's centring over the last axis (identity for RMSNorm). It is an
                                  orthogonal projection, so it also maps a *reading* vector a to the one
                                  that reads the centred input: (x - mean x) . a == x . centre(a).
    norm_scale(x, eps)            the norm's divisor for an already centred x: sqrt(mean(x^2) + eps),
                                  keepdim ([..., 1], what ``hook_scale`` taps).
    normalize(x, kind, eps)       the weightless norm, in float32: centre(x) / norm_scale(centre(x)).
    norm(x, w, b, kind, eps)      the full norm: normalize(x) * w + b.
    activation(x, act_fn)         the MLP nonlinearity.
    next_token_log_probs(logits)  log-softmax of logits[:, :-1]: position i's distribution over token i+1.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor


def centre(x: Tensor, kind: str) -> Tensor:
    """Subtract the mean over the last axis for LayerNorm ("LN"); return x unchanged for RMSNorm."""
    return x - x.mean(-1, keepdim=True) if kind == "LN" else x


def norm_scale(x: Tensor, eps: float) -> Tensor:
    """The norm's divisor [..., 1] of an already centred x: sqrt(mean over the last axis of x^2 + eps)."""
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def normalize(x: Tensor, kind: str, eps: float) -> Tensor:
    """The weightless norm in float32: LayerNorm (centre, then divide by the RMS) or RMSNorm."""
    x = centre(x.float(), kind)
    return x / norm_scale(x, eps)


def norm(x: Tensor, w: Tensor, b: Tensor, kind: str, eps: float) -> Tensor:
    """The full norm with weight ``w`` and bias ``b`` (RMS norms carry zero biases), computed in float32."""
    return normalize(x, kind, eps) * w + b


def activation(x: Tensor, act_fn: str) -> Tensor:
    """The MLP nonlinearity named by ``cfg.act_fn``: gelu_new / gelu_pytorch_tanh (tanh form), gelu (erf),
    relu, or silu (anything else: ``config`` admits only these names)."""
    if act_fn in ("gelu_new", "gelu_pytorch_tanh"):
        # the same tanh formula as transformers' NewGELU, fused in one kernel (~5x faster than the
        # elementwise chain on CPU; differs by float32 rounding only, ~2e-7)
        return F.gelu(x, approximate="tanh")
    if act_fn == "gelu":
        return F.gelu(x)
    if act_fn == "relu":
        return F.relu(x)
    return F.silu(x)


def next_token_log_probs(logits: Tensor) -> Tensor:
    """[batch, pos - 1, d_vocab] log-probabilities of the next token from logits [batch, pos, d_vocab]."""
    return logits[:, :-1].log_softmax(-1)
