"""Splice handcrafted parts into a copy of a model, and ablate parts of it.

Every function takes :class:`Weights` and returns a new ``Weights`` (the input is never modified).
Zero- and mean-ablation are written into the weights, so an ablated model can be saved as a checkpoint:

* zero-ablating neuron i: W_in[:, i] = 0, b_in[i] = 0, W_out[i] = 0 (act(0) = 0 for GELU/ReLU/SiLU);
* mean-ablating neuron i: the same, and ``b_out += mean_act[i] * W_out[i]`` (the neuron's average output);
* zero-ablating head h: W_V[h] = 0, W_O[h] = 0;  mean-ablating it: the same, and ``b_O += mean result[h]``.

Resample ablation (each position gets the unit's activation from another random position) cannot live in
weights; :func:`resample_interventions` returns forward interventions for it.
Means are over every real token position of a corpus (:func:`unit_means`), BOS included.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor

from ..errors import CircuitbookError
from ..model import Model, Weights, run, save_hf
from ..progress import progress as progress_bar
from ..units import UnitError, unit_kind


class SpliceError(CircuitbookError, ValueError):
    """A splice that does not fit the model (bad index or shape)."""


@dataclasses.dataclass
class UnitMeans:
    """Mean activations over a corpus, for mean ablation.

    neuron [n_layers, d_mlp]: mean of blocks.{l}.mlp.hook_post; head [n_layers, n_heads, d_model]: mean of
    blocks.{l}.attn.hook_result (each head's output without b_O); embed [d_model]: mean token embedding
    W_E[token] over the corpus; n_tokens: how many positions were averaged.
    """

    neuron: Tensor
    head: Tensor
    embed: Tensor
    n_tokens: int


def unit_means(weights: Weights, batches: Iterable, progress: bool = False) -> UnitMeans:
    """Average every neuron's activation and every head's output over the real positions of ``batches``."""
    cfg = weights.cfg
    L = cfg.n_layers
    taps = [f"blocks.{l}.mlp.hook_post" for l in range(L)] + [f"blocks.{l}.attn.hook_result" for l in range(L)]
    neuron = torch.zeros(L, cfg.d_mlp, dtype=torch.float64)
    head = torch.zeros(L, cfg.n_heads, cfg.d_model, dtype=torch.float64)
    embed = torch.zeros(cfg.d_model, dtype=torch.float64)
    n = 0
    for b in progress_bar(batches, desc="unit means", unit="batch", enabled=progress):
        toks, m = b.tokens.to(weights.device), b.mask.to(weights.device)
        out = run(weights, toks, taps)
        for l in range(L):
            neuron[l] += out[f"blocks.{l}.mlp.hook_post"][m].double().sum(0).cpu()
            head[l] += out[f"blocks.{l}.attn.hook_result"][m].double().sum(0).cpu()
        embed += weights.W_E[toks[m]].double().sum(0).cpu()
        n += int(m.sum())
    if n == 0:
        raise SpliceError("the corpus gave no tokens to average over")
    dt = weights.dtype
    return UnitMeans((neuron / n).to(dt), (head / n).to(dt), (embed / n).to(dt), n)


def _check(weights: Weights, layer: int, idx: Iterable[int], size: int, what: str) -> list[int]:
    if not 0 <= layer < weights.cfg.n_layers:
        raise SpliceError(f"layer {layer} does not exist (the model has {weights.cfg.n_layers})")
    idx = [int(i) for i in idx]
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise SpliceError(f"{what} {bad[0]} does not exist in layer {layer} (there are {size})")
    return idx


def replace_neuron(weights: Weights, layer: int, idx: int, w_in: Tensor, b_in: float | Tensor, w_out: Tensor,
                   w_gate: Tensor | None = None) -> Weights:
    """Neuron ``idx`` now reads ``w_in`` [d_model] (+ ``b_in``) and writes ``w_out`` [d_model]."""
    _check(weights, layer, [idx], weights.cfg.d_mlp, "neuron")
    d = weights.cfg.d_model
    if w_in.shape != (d,) or w_out.shape != (d,):
        raise SpliceError(f"neuron vectors must be [{d}], got {tuple(w_in.shape)} and {tuple(w_out.shape)}")
    w = weights.clone()
    w.W_in[layer, :, idx] = w_in.to(w.W_in)
    w.b_in[layer, idx] = torch.as_tensor(b_in).to(w.b_in)
    w.W_out[layer, idx] = w_out.to(w.W_out)
    if w.W_gate is not None:
        if w_gate is None:
            raise SpliceError("a gated MLP needs w_gate for a replaced neuron")
        w.W_gate[layer, :, idx] = w_gate.to(w.W_gate)
    return w


def add_neurons(weights: Weights, layer: int, W_in: Tensor, b_in: Tensor, W_out: Tensor,
                W_gate: Tensor | None = None) -> tuple[Weights, list[int]]:
    """Append k neurons to layer ``layer``: W_in [d_model, k], b_in [k], W_out [k, d_model].

    d_mlp grows by k in every layer (other layers get inert zero neurons, act(0) = 0), and the config's
    intermediate size follows, so the result still exports. Returns (weights, the new neuron indices)."""
    _check(weights, layer, [], 0, "neuron")
    cfg = weights.cfg
    k = W_in.shape[1]
    if W_in.shape != (cfg.d_model, k) or b_in.shape != (k,) or W_out.shape != (k, cfg.d_model):
        raise SpliceError(f"add_neurons needs W_in [d_model, k], b_in [k], W_out [k, d_model]; got "
                          f"{tuple(W_in.shape)}, {tuple(b_in.shape)}, {tuple(W_out.shape)}")
    if weights.W_gate is not None and W_gate is None:
        raise SpliceError("a gated MLP needs W_gate for added neurons")
    L, m = cfg.n_layers, cfg.d_mlp
    z = lambda *s: torch.zeros(*s, dtype=weights.dtype, device=weights.device)  # noqa: E731
    new_in, new_b, new_out = z(L, cfg.d_model, k), z(L, k), z(L, k, cfg.d_model)
    new_in[layer], new_b[layer], new_out[layer] = W_in, b_in, W_out
    changes = dict(W_in=torch.cat([weights.W_in, new_in], 2), b_in=torch.cat([weights.b_in, new_b], 1),
                   W_out=torch.cat([weights.W_out, new_out], 1))
    if weights.W_gate is not None:
        new_g = z(L, cfg.d_model, k)
        new_g[layer] = W_gate
        changes["W_gate"] = torch.cat([weights.W_gate, new_g], 2)
    hf = dict(cfg.hf_config)
    for key in ("intermediate_size", "n_inner"):
        if key in hf or (key == "intermediate_size" and cfg.arch != "gpt2") or (key == "n_inner" and cfg.arch == "gpt2"):
            hf[key] = m + k
    new_cfg = dataclasses.replace(cfg, d_mlp=m + k, hf_config=hf)
    w = weights.clone().replace(cfg=new_cfg, **changes)
    return w, list(range(m, m + k))


def replace_head(weights: Weights, layer: int, head: int, W_Q: Tensor, W_K: Tensor, W_V: Tensor,
                 W_O: Tensor) -> Weights:
    """Head ``head`` now uses W_Q/W_K/W_V [d_model, d_head] and W_O [d_head, d_model] (its biases zeroed)."""
    _check(weights, layer, [head], weights.cfg.n_heads, "head")
    cfg = weights.cfg
    for name, t, shape in (("W_Q", W_Q, (cfg.d_model, cfg.d_head)), ("W_K", W_K, (cfg.d_model, cfg.d_head)),
                           ("W_V", W_V, (cfg.d_model, cfg.d_head)), ("W_O", W_O, (cfg.d_head, cfg.d_model))):
        if tuple(t.shape) != shape:
            raise SpliceError(f"{name} must be {list(shape)}, got {list(t.shape)}")
    if cfg.n_kv_heads != cfg.n_heads:
        raise SpliceError("replacing one head of a grouped-query model would change its whole kv group")
    w = weights.clone()
    for name, t in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        getattr(w, name)[layer, head] = t.to(w.W_Q)
    for name in ("b_Q", "b_K", "b_V"):
        getattr(w, name)[layer, head] = 0
    return w


def ablate_neurons(weights: Weights, layer: int, idx: Iterable[int], mode: str = "zero",
                   means: UnitMeans | None = None) -> Weights:
    """Zero- or mean-ablate neurons ``idx`` of ``layer`` in the weights (see the module docstring)."""
    idx = _check(weights, layer, idx, weights.cfg.d_mlp, "neuron")
    if mode not in ("zero", "mean"):
        raise SpliceError(f"weight ablation mode must be zero or mean (resample: use resample_interventions), not {mode!r}")
    if mode == "mean" and means is None:
        raise SpliceError("mean ablation needs unit means (unit_means(weights, batches))")
    w = weights.clone()
    if not idx:
        return w
    ii = torch.tensor(idx, device=w.W_in.device)
    if mode == "mean":
        w.b_out[layer] += means.neuron[layer, ii].to(w.W_out) @ weights.W_out[layer, ii]
    w.W_in[layer][:, ii] = 0
    w.b_in[layer, ii] = 0
    w.W_out[layer, ii] = 0
    if w.W_gate is not None:
        w.W_gate[layer][:, ii] = 0
    return w


def ablate_heads(weights: Weights, layer: int, heads: Iterable[int], mode: str = "zero",
                 means: UnitMeans | None = None) -> Weights:
    """Zero- or mean-ablate heads of ``layer`` in the weights (see the module docstring)."""
    heads = _check(weights, layer, heads, weights.cfg.n_heads, "head")
    if mode not in ("zero", "mean"):
        raise SpliceError(f"weight ablation mode must be zero or mean, not {mode!r}")
    if mode == "mean" and means is None:
        raise SpliceError("mean ablation needs unit means (unit_means(weights, batches))")
    w = weights.clone()
    for h in heads:
        if mode == "mean":
            w.b_O[layer] += means.head[layer, h].to(w.b_O)
        w.W_O[layer, h] = 0
        if weights.cfg.n_kv_heads == weights.cfg.n_heads:
            w.W_V[layer, h] = 0
            w.b_V[layer, h] = 0
    return w


def ablate_embedding(weights: Weights, mode: str = "zero", means: UnitMeans | None = None) -> Weights:
    """Remove the direct path's token identity: every W_E row becomes 0 or the corpus-mean embedding."""
    w = weights.clone()
    if mode == "mean":
        if means is None:
            raise SpliceError("mean ablation needs unit means")
        w.W_E[:] = means.embed.to(w.W_E)
    else:
        w.W_E.zero_()
    return w


# kind name -> fn(weights, layer, idx list, mode, means) -> Weights: how each unit kind is ablated in the
# weights ("embed" is the direct path's token identity, not a unit). A new unit kind registers its own.
WEIGHT_ABLATORS: dict[str, Callable[..., Weights]] = {}


def register_weight_ablator(kind: str, fn: Callable[..., Weights]) -> None:
    """Teach :func:`ablate_units` to ablate units of ``kind`` (a duplicate registration is an error)."""
    if kind in WEIGHT_ABLATORS:
        raise SpliceError(f"a weight ablator for {kind!r} is already registered")
    WEIGHT_ABLATORS[kind] = fn


def ablate_units(weights: Weights, units: Iterable[tuple[str, int, int]], mode: str,
                 means: UnitMeans | None = None) -> Weights:
    """Ablate a mix of units ((kind, layer, idx) of any kind with a registered weight ablator: "neuron",
    "head", ...) and ("embed", 0, 0)."""
    by: dict[tuple[str, int], list[int]] = {}
    for kind, layer, idx in units:
        by.setdefault((kind, layer), []).append(idx)
    w = weights
    for (kind, layer), idx in sorted(by.items()):
        fn = WEIGHT_ABLATORS.get(kind)
        if fn is None:
            raise SpliceError(f"cannot ablate units of kind {kind!r} in the weights "
                              f"(ablatable: {', '.join(WEIGHT_ABLATORS)})")
        w = fn(w, layer, idx, mode, means)
    return w if w is not weights else weights.clone()


def resample_interventions(units: Iterable[tuple[str, int, int]], seed: int = 0) -> dict:
    """Forward interventions that resample-ablate units of any kind: each position gets the unit's value
    (along the kind's unit axis of its tap) from a random position of the same batch (a fresh permutation
    per call, seeded)."""
    g = torch.Generator().manual_seed(seed)
    by: dict[tuple[str, int], list[int]] = {}
    for kind, layer, idx in units:
        try:
            k = unit_kind(kind)
        except UnitError as e:
            raise SpliceError(str(e)) from None
        if k.unit_axis != 2:
            raise SpliceError(f"resampling needs units on axis 2 of [batch, pos, ...]; {kind} uses {k.unit_axis}")
        by.setdefault((k.tap_name(layer), k.unit_axis), []).append(idx)

    def make(idx):
        def fn(x):
            b, p = x.shape[:2]
            perm = torch.randperm(b * p, generator=g).to(x.device)
            flat = x.reshape(b * p, *x.shape[2:]).clone()
            src = x.reshape(b * p, *x.shape[2:])[perm]
            flat[:, idx] = src[:, idx]
            return flat.reshape(x.shape)
        return fn

    return {name: make(torch.tensor(idx)) for (name, _), idx in by.items()}


def save_checkpoint(weights: Weights, model: Model, out_dir: str | Path) -> Path:
    """Save spliced weights as an HF checkpoint (with the original model's tokenizer files)."""
    try:
        return save_hf(model.with_weights(weights), out_dir)
    except ValueError as e:
        raise SpliceError(f"cannot export these weights: {e}") from None


register_weight_ablator("neuron", ablate_neurons)
register_weight_ablator("head", ablate_heads)
register_weight_ablator("embed", lambda w, layer, idx, mode, means: ablate_embedding(w, mode, means))
