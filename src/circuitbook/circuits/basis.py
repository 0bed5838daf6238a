"""The analysis basis every weight-based circuit shares: processed weights and tokens seen through the norm.

Weights are ``weights.processed()`` in float32: every norm's weight/bias folded into the matrices that read
it (so a norm is a pure normalisation), writing weights centred for LayerNorm models, the unembedding
centred (logits shift by a per-position constant; log-probs are unchanged). For LayerNorm models the
*reading* weights (W_Q, W_K, W_V, W_in, W_gate, W_U) are also centred over their d_model (input) axis: a
LayerNorm output has zero mean, so that component is never read. This is TransformerLens' basis
(``fold_ln`` with centred weights), which composition scores and eigenvalues depend on.

Token inputs go through the norm *exactly*: ``embed[t] = normalize(W_E[t] + mean(W_pos[:pos_window]))`` is
what the first layer's ln1 (and, in a model with attention and MLPs removed, ln_final) outputs for token t at
an average position. Rotary models have no W_pos: ``embed[t] = normalize(W_E[t])`` (exact at any position).

The one approximation: **a norm reading a sum of many components is treated as linear** with a fixed scale.
A component c (a neuron's W_out row, a head's output) that lands in the residual stream reaches the logits
as ``c / s_final @ W_U``, where ``s_final`` is ln_final's scale (RMS of the centred residual) at that
position. We divide by a typical scale (:class:`NormScales`, the mean ``hook_scale`` measured on a corpus)
or by 1 when none was measured; the *ranking* of tokens within one effect vector never depends on it.
The same holds for a head output read by a later ln1/ln2.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..errors import CircuitbookError
from ..model.maths import normalize
from ..model.weights import Weights

DEFAULT_POS_WINDOW = 256  # positions averaged into a token's input (the circuits stage's default)


class CircuitError(CircuitbookError, ValueError):
    """An analysis was asked for something the model does not have (a head, a layer, W_pos...)."""


@dataclasses.dataclass
class NormScales:
    """Typical norm scales (mean ``hook_scale`` over real, non-BOS tokens), or all 1.0 when unmeasured.

    ln1, ln2: [n_layers] floats; final: ln_final's. ``source`` says where they came from.
    """

    ln1: list[float]
    ln2: list[float]
    final: float
    source: str = "unit (not measured)"

    @classmethod
    def unit(cls, n_layers: int) -> "NormScales":
        return cls([1.0] * n_layers, [1.0] * n_layers, 1.0)


@dataclasses.dataclass
class Basis:
    """Everything the circuit functions need, computed once per model.

    w:       processed float32 :class:`Weights` (see module docstring).
    embed:   [d_vocab, d_model] tokens through the norm (rows = token ids).
    pos:     [pos_window, d_model] positions through the norm, ``normalize(mean(W_E) + W_pos[p])``; None for
             rotary models.
    scales:  :class:`NormScales` used to turn residual-stream writes into logit / pre-activation units.
    """

    w: Weights
    embed: Tensor
    pos: Tensor | None
    scales: NormScales
    pos_window: int

    @property
    def cfg(self):
        return self.w.cfg

    def check_head(self, layer: int, head: int) -> None:
        c = self.cfg
        if not (0 <= layer < c.n_layers and 0 <= head < c.n_heads):
            raise CircuitError(f"no head {layer}.{head}: the model has {c.n_layers} layers x {c.n_heads} heads")

    def check_neuron(self, layer: int, idx: int | None = None) -> None:
        c = self.cfg
        if not 0 <= layer < c.n_layers or (idx is not None and not 0 <= idx < c.d_mlp):
            raise CircuitError(f"no neuron {layer}.{idx}: the model has {c.n_layers} layers x {c.d_mlp} neurons")


def make_basis(weights, scales: NormScales | None = None, pos_window: int = DEFAULT_POS_WINDOW) -> Basis:
    """Build the :class:`Basis` from a ``Model``, raw ``Weights`` or an existing Basis (returned as is)."""
    if isinstance(weights, Basis):
        return weights
    weights = getattr(weights, "weights", weights)  # a Model
    if not isinstance(weights, Weights):
        raise CircuitError(f"expected a Model, Weights or Basis, got {type(weights).__name__}")
    cfg = weights.cfg
    w = weights.to(dtype=torch.float32)
    w = w if "fold_ln" in w.processing else w.processed()
    if cfg.norm == "LN" and "center_reading_weights" not in w.processing:
        w = center_reading_weights(w)
    n = position_window(w, pos_window)
    embed = token_inputs(w, None, n)
    pos = None if w.W_pos is None else normalize(w.W_pos[:n] + w.W_E.mean(0), cfg.norm, cfg.eps)
    return Basis(w, embed.contiguous(), pos, scales or NormScales.unit(cfg.n_layers), n)


def position_window(w: Weights, pos_window: int = DEFAULT_POS_WINDOW) -> int:
    """How many positions (from 0) a token's input averages over: ``pos_window`` clipped to the model's
    positions (at least 1); 0 for rotary models (no W_pos)."""
    return 0 if w.W_pos is None else max(1, min(pos_window, w.W_pos.shape[0]))


def token_inputs(w: Weights, ids: Tensor | None = None, pos_window: int = DEFAULT_POS_WINDOW) -> Tensor:
    """[len(ids), d_model] (every token when ids is None) what a weightless norm outputs for each token at an
    average position: ``normalize(W_E[t] + mean(W_pos[:pos_window]))``; ``normalize(W_E[t])`` for rotary
    models. ``w`` must be processed (norm weights folded) for this to be what the model's first norm reads."""
    x = (w.W_E if ids is None else w.W_E[torch.as_tensor(ids, device=w.W_E.device)]).float()
    n = position_window(w, pos_window)
    if n:
        x = x + w.W_pos[:n].float().mean(0)
    return normalize(x, w.cfg.norm, w.cfg.eps)


def center_reading_weights(w: Weights) -> Weights:
    """Remove the mean over d_model from every matrix that reads a (weightless, folded) LayerNorm's output.

    Exact only after ``fold_ln`` on a LayerNorm model: the norm's output has zero mean, so ``x @ W`` is unchanged.
    """
    if w.cfg.norm != "LN" or "fold_ln" not in w.processing:
        raise CircuitError("centring reading weights needs folded LayerNorm weights")
    c = lambda t, axis: None if t is None else t - t.mean(axis, keepdim=True)  # noqa: E731
    return w.replace(W_Q=c(w.W_Q, -2), W_K=c(w.W_K, -2), W_V=c(w.W_V, -2), W_in=c(w.W_in, -2),
                     W_gate=c(w.W_gate, -2), W_U=c(w.W_U, 0),
                     processing=w.processing + ("center_reading_weights",))


@torch.inference_mode()
def measure_scales(weights, token_batches, max_tokens: int = 20_000) -> NormScales:
    """Mean ln1/ln2/ln_final scale over real tokens (BOS position excluded) of the given batches.

    ``token_batches`` yields :class:`circuitbook.corpus.Batch` (or (tokens, mask) pairs). Scales are the
    same for raw and processed weights (folding never changes the residual stream's norm).
    """
    from ..model.forward import run

    weights = getattr(weights, "weights", weights)
    cfg = weights.cfg
    names = [f"blocks.{l}.ln{i}.hook_scale" for l in range(cfg.n_layers) for i in (1, 2)] + ["ln_final.hook_scale"]
    sums = torch.zeros(len(names), dtype=torch.float64)
    n = 0
    for b in token_batches:
        tokens, mask = (b.tokens, b.mask) if hasattr(b, "tokens") else b
        mask = mask.clone()
        mask[:, 0] = False
        cache = run(weights, tokens.to(weights.device), names)
        for j, nm in enumerate(names):
            sums[j] += float(cache[nm][..., 0].double().cpu()[mask].sum())
        n += int(mask.sum())
        if n >= max_tokens:
            break
    if n == 0:
        raise CircuitError("no tokens to measure norm scales on (empty corpus?)")
    m = (sums / n).tolist()
    L = cfg.n_layers
    return NormScales([m[2 * l] for l in range(L)], [m[2 * l + 1] for l in range(L)], m[-1],
                      source=f"measured on {n} tokens")
