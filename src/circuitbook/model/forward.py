"""One forward pass for every architecture, top to bottom, with taps and interventions.

``run(weights, tokens, taps=[...])`` returns exactly the named activations and stops as soon as it has
them, so a scan that wants ``blocks.0.mlp.hook_post`` never computes W_out or the unembedding.
``interventions={name: fn}`` replaces an activation by ``fn(activation)`` before anything downstream
reads it (ablate, patch, steer).

``lengths`` [batch] (right-padded batches: sequence i's real tokens are ``tokens[i, :lengths[i]]``): every
position-wise step (norms, Q/K/V/O projections, the MLP, the unembedding) runs on the real positions only,
packed as rows ``[n_real, ...]``, and only attention sees the padded ``[batch, pos]`` layout (causal: a real
query never reads a later pad). A batch of stories of mixed lengths then costs its real tokens, not
``batch x longest``. The results at real positions are the padded forward's (float rounding aside); taps
and interventions still see ``[batch, pos, ...]``, with zeros at the padding.

Tap names follow TransformerLens. Shapes ([batch, pos, ...]):

    hook_embed, hook_pos_embed                      [b, p, d_model]
    blocks.{l}.hook_resid_pre / hook_resid_mid / hook_resid_post    [b, p, d_model]
    blocks.{l}.ln1.hook_scale, ln2.hook_scale       [b, p, 1]
    blocks.{l}.attn.hook_q / hook_k / hook_v / hook_z   [b, p, n_heads, d_head] (q, k before rotary)
    blocks.{l}.attn.hook_attn_scores / hook_pattern [b, n_heads, q_pos, k_pos]
    blocks.{l}.attn.hook_result                     [b, p, n_heads, d_model]  (per-head output, no b_O)
    blocks.{l}.hook_attn_out, hook_mlp_out          [b, p, d_model]
    blocks.{l}.mlp.hook_pre / hook_pre_linear / hook_post   [b, p, d_mlp]
        (gated MLPs: hook_pre is the gate pre-activation, hook_pre_linear the W_in branch)
    ln_final.hook_scale [b, p, 1], ln_final.hook_normalized [b, p, d_model], logits [b, p, d_vocab]
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from .maths import activation, centre, next_token_log_probs, norm_scale
from .weights import Weights

Intervention = Callable[[Tensor], Tensor]

_LAYER_HOOKS = (
    "hook_resid_pre", "ln1.hook_scale", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
    "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale",
    "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
)


def hook_names(cfg) -> list[str]:
    """Every tap name this model produces, in the order the forward produces them."""
    names = ["hook_embed"] + (["hook_pos_embed"] if cfg.positional == "learned" else [])
    layer = [n for n in _LAYER_HOOKS if cfg.gated_mlp or n != "mlp.hook_pre_linear"]
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.{h}" for h in layer]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized", "logits"]


class _Done(Exception):
    """Raised inside the forward once every requested tap is collected."""


class _Taps:
    def __init__(self, weights: Weights, taps: Iterable[str], interventions: dict[str, Intervention] | None):
        self.wanted = set(taps)
        self.interventions = dict(interventions or {})
        valid = set(hook_names(weights.cfg))
        bad = sorted((self.wanted | set(self.interventions)) - valid)
        if bad:
            raise ValueError(f"unknown activation name(s) {bad}; valid names look like "
                             f"'blocks.0.mlp.hook_post' (see circuitbook.model.forward.hook_names)")
        self.cache: dict[str, Tensor] = {}

    def needs(self, name: str) -> bool:
        return name in self.wanted or name in self.interventions

    def __call__(self, name: str, x: Tensor) -> Tensor:
        fn = self.interventions.get(name)
        if fn is not None:
            x = fn(x)
        if name in self.wanted:
            self.cache[name] = x
            if len(self.cache) == len(self.wanted):
                raise _Done
        return x


def _norm(x: Tensor, w: Tensor, b: Tensor, kind: str, eps: float, tap, name: str) -> Tensor:
    """:func:`.maths.norm` in fp32, back in x's dtype before the weight, with the scale exposed as a tap."""
    dtype = x.dtype
    x = centre(x.float(), kind)
    scale = tap(name, norm_scale(x, eps))
    return (x / scale).to(dtype) * w + b


def _rotary(x: Tensor, base: float) -> Tensor:
    """Rotary position embedding, half-split convention (as HF Llama). x: [b, p, h, e]."""
    p, e = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, e, 2, dtype=torch.float32, device=x.device) / e))
    ang = torch.arange(p, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None]
    cos, sin = torch.cat([ang, ang], -1).cos()[None, :, None], torch.cat([ang, ang], -1).sin()[None, :, None]
    x1, x2 = x[..., : e // 2], x[..., e // 2:]
    return (x.float() * cos + torch.cat([-x2, x1], -1).float() * sin).to(x.dtype)


def attention_mask(n_q: int, n_k: int, kind: str, window: int | None, device=None) -> Tensor:
    """Bool [n_q, n_k], True where query i may read key j: causal, and within `window` for local layers."""
    i = torch.arange(n_k - n_q, n_k, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    mask = j <= i
    if kind == "local":
        mask &= j > i - window
    return mask


class _Rows:
    """Where position-wise tensors live: ``[batch, pos, ...]`` (no lengths) or packed real rows ``[n, ...]``."""

    def __init__(self, tokens: Tensor, lengths: Tensor | None):
        self.b, self.p = tokens.shape
        self.idx = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=tokens.device)
            if lengths.shape != (self.b,) or bool((lengths < 0).any()) or bool((lengths > self.p).any()):
                raise ValueError(f"lengths must be [batch] = [{self.b}] values in 0..{self.p}, got "
                                 f"{tuple(lengths.shape)}")
            valid = torch.arange(self.p, device=tokens.device)[None] < lengths[:, None]
            self.idx = valid.reshape(-1).nonzero().squeeze(1)

    def pack(self, x: Tensor) -> Tensor:
        """[batch, pos, ...] -> the layout position-wise steps run in."""
        return x if self.idx is None else x.reshape(self.b * self.p, *x.shape[2:]).index_select(0, self.idx)

    def unpack(self, x: Tensor) -> Tensor:
        """The position-wise layout -> [batch, pos, ...] (zeros at padding)."""
        if self.idx is None:
            return x
        out = x.new_zeros(self.b * self.p, *x.shape[1:])
        return out.index_copy_(0, self.idx, x).view(self.b, self.p, *x.shape[1:])

    def tap(self, tap, name: str, x: Tensor) -> Tensor:
        """A position-wise tap: taps and interventions see [batch, pos, ...]; x comes back in its layout."""
        if self.idx is None or not tap.needs(name):
            return tap(name, x) if self.idx is None else x
        y = tap(name, self.unpack(x))
        return self.pack(y) if name in tap.interventions else x


def _linear(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """x [..., d_in] @ W [d_in, d_out] + b, one fused matmul-and-bias (addmm) over the flattened rows."""
    x2 = x.reshape(-1, x.shape[-1])
    y = torch.addmm(b, x2, W) if b is not None else x2 @ W
    return y.view(*x.shape[:-1], W.shape[-1])


def _heads_in(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x [..., d_model] through per-head weights W [n_heads, d_model, d_head] + b [n_heads, d_head]:
    [..., n_heads, d_head] (one matmul over all heads)."""
    h, d, e = W.shape
    return _linear(x, W.permute(1, 0, 2).reshape(d, h * e), b.reshape(h * e)).view(*x.shape[:-1], h, e)


def run(weights: Weights, tokens: Tensor, taps: Iterable[str] = ("logits",),
        interventions: dict[str, Intervention] | None = None, lengths: Tensor | None = None) -> dict[str, Tensor]:
    """Run ``tokens`` [batch, pos] (int64) through the model and return {tap name: activation}
    (``lengths``: see the module docstring)."""
    tap = _Taps(weights, taps, interventions)
    if not tap.wanted:
        return {}
    if tokens.ndim == 1:
        tokens = tokens[None]
    try:
        _forward(weights, tokens, tap, _Rows(tokens, lengths))
    except _Done:
        pass
    return tap.cache


@torch.inference_mode()
def _forward(w: Weights, tokens: Tensor, tap: _Taps, rows: _Rows) -> None:
    cfg = w.cfg
    n_pos = tokens.shape[1]
    if w.W_pos is not None and n_pos > w.W_pos.shape[0]:
        raise ValueError(f"sequence of {n_pos} tokens exceeds the model's {w.W_pos.shape[0]} positions")
    resid = tap("hook_embed", w.W_E[tokens])
    if w.W_pos is not None:
        resid = resid + tap("hook_pos_embed", w.W_pos[:n_pos])[None]
    resid = rows.pack(resid)  # from here on position-wise tensors are rows.pack'ed; taps see [batch, pos, ...]

    for l in range(cfg.n_layers):
        h = lambda name, x: rows.tap(tap, f"blocks.{l}.{name}", x)  # noqa: E731
        resid = h("hook_resid_pre", resid)

        # --- attention (the only step that needs the [batch, pos] layout)
        x = _norm(resid, w.ln1_w[l], w.ln1_b[l], cfg.norm, cfg.eps, h, "ln1.hook_scale")
        q = rows.unpack(h("attn.hook_q", _heads_in(x, w.W_Q[l], w.b_Q[l])))
        k = rows.unpack(h("attn.hook_k", _heads_in(x, w.W_K[l], w.b_K[l])))
        v = rows.unpack(h("attn.hook_v", _heads_in(x, w.W_V[l], w.b_V[l])))
        if cfg.positional == "rotary":
            q, k = _rotary(q, cfg.rotary_base), _rotary(k, cfg.rotary_base)
        mask = attention_mask(n_pos, n_pos, cfg.attn_types[l], cfg.window, tokens.device)
        if any(tap.needs(f"blocks.{l}.attn.{n}") for n in ("hook_attn_scores", "hook_pattern")):
            scores = torch.einsum("bqhe,bkhe->bhqk", q.float(), k.float())
            if cfg.attn_scale != 1.0:  # (GPT-Neo does not scale: skip a pass over [b, h, q, k])
                scores.div_(cfg.attn_scale)
            scores = tap(f"blocks.{l}.attn.hook_attn_scores", scores.masked_fill_(~mask, float("-inf")))
            pattern = tap(f"blocks.{l}.attn.hook_pattern", scores.softmax(-1))
            z = torch.einsum("bhqk,bkhe->bqhe", pattern.to(v.dtype), v)
        else:  # fused kernel when nobody looks at the pattern
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, scale=1.0 / cfg.attn_scale).transpose(1, 2)
        z = h("attn.hook_z", rows.pack(z))
        if tap.needs(f"blocks.{l}.attn.hook_result"):
            attn_out = h("attn.hook_result", torch.einsum("...he,hed->...hd", z, w.W_O[l])).sum(-2) + w.b_O[l]
        else:
            attn_out = _linear(z.flatten(-2), w.W_O[l].flatten(0, 1), w.b_O[l])
        resid = h("hook_resid_mid", resid + h("hook_attn_out", attn_out))

        # --- MLP
        x = _norm(resid, w.ln2_w[l], w.ln2_b[l], cfg.norm, cfg.eps, h, "ln2.hook_scale")
        if w.W_gate is not None:
            pre = h("mlp.hook_pre", _linear(x, w.W_gate[l], None))
            post = activation(pre, cfg.act_fn) * h("mlp.hook_pre_linear", _linear(x, w.W_in[l], w.b_in[l]))
        else:
            pre = h("mlp.hook_pre", _linear(x, w.W_in[l], w.b_in[l]))
            post = activation(pre, cfg.act_fn)
        post = h("mlp.hook_post", post)
        resid = h("hook_resid_post", resid + h("hook_mlp_out", _linear(post, w.W_out[l], w.b_out[l])))

    x = _norm(resid, w.lnf_w, w.lnf_b, cfg.norm, cfg.eps, lambda n, y: rows.tap(tap, n, y), "ln_final.hook_scale")
    x = rows.tap(tap, "ln_final.hook_normalized", x)
    tap("logits", rows.unpack(_linear(x, w.W_U, w.b_U).float()))


def mlp_input(weights: Weights, layer: int, resid_mid: Tensor) -> Tensor:
    """What layer ``layer``'s MLP reads: its ln2 applied to ``resid_mid`` (``blocks.{layer}.hook_resid_mid``),
    computed exactly as the forward does (the input of a transcoder)."""
    cfg = weights.cfg
    return _norm(resid_mid, weights.ln2_w[layer], weights.ln2_b[layer], cfg.norm, cfg.eps, lambda n, x: x, "")


def log_probs(weights: Weights, tokens: Tensor, interventions: dict[str, Intervention] | None = None) -> Tensor:
    """Log-probabilities of each next token: [batch, pos-1] (position i predicts token i+1)."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    logits = run(weights, tokens, ("logits",), interventions)["logits"]
    return next_token_log_probs(logits).gather(-1, tokens[:, 1:, None])[..., 0]
