"""Neuron output effect: which tokens an MLP neuron promotes and suppresses, read off the weights.

Direct path: ``W_out[l][n] @ W_U / s_final`` [d_vocab], logits per unit of activation (processed weights:
W_out centred for LayerNorm models, ln_final folded into W_U, W_U centred). The final norm is treated as
linear with scale ``s_final`` (see :mod:`.basis`): exact up to that one positive constant, which never
changes the ranking. For the last layer this is the neuron's whole effect on the logits.

For earlier layers the output also reaches the logits through later heads:
``W_out[l][n] / s_ln1[l2] @ W_V[l2, h] @ W_O[l2, h] @ W_U / s_final`` (per unit activation and per unit of
attention paid to the neuron's position), for every head h of every later layer l2. Paths through later
MLPs are nonlinear and are not given here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .basis import CircuitError, make_basis
from .effects import LayerEffects, TokenEffect, effect_from_vector
from .screened_topk import chunked_tops, factored_row_fn


def output_paths(cfg, layer: int) -> list[tuple[int, int] | None]:
    """The paths a layer-``layer`` neuron reaches the logits by: None (direct), then (l2, h) for later heads."""
    return [None] + [(l2, h) for l2 in range(layer + 1, cfg.n_layers) for h in range(cfg.n_heads)]


def _factors(b, layer: int, via) -> tuple[Tensor, Tensor]:
    w, s = b.w, b.scales
    if via is None:
        return w.W_out[layer], w.W_U / s.final
    l2, h = via
    b.check_head(l2, h)
    if l2 <= layer:
        raise CircuitError(f"a layer-{layer} neuron only reaches heads of later layers, not layer {l2}")
    return (w.W_out[layer] @ w.W_V[l2, h]) / s.ln1[l2], (w.W_O[l2, h] @ w.W_U) / s.final


def direct_output(basis, layer: int, tokens: Tensor | None = None) -> Tensor:
    """[d_mlp, n_tokens] the direct logit effect of one unit of activation of every neuron of ``layer`` on
    each token (every token when ``tokens`` is None): ``W_out[layer] @ W_U[:, tokens] / s_final``.
    The one definition of a neuron's direct output (typing reads it too)."""
    b = make_basis(basis)
    b.check_neuron(layer)
    A, B = _factors(b, layer, None)
    return A @ (B if tokens is None else B[:, torch.as_tensor(tokens, device=B.device)])


def neuron_output_vector(basis, layer: int, idx: int, via: tuple[int, int] | None = None) -> Tensor:
    """The dense [d_vocab] output effect of one neuron along one path."""
    b = make_basis(basis)
    b.check_neuron(layer, idx)
    A, B = _factors(b, layer, via)
    return A[idx] @ B


def neuron_output_effect(basis, layer: int, idx: int, via: tuple[int, int] | None = None, k: int = 10) -> TokenEffect:
    """Top-k promoted and suppressed tokens of one neuron (direct path, or through head ``via`` = (l2, h))."""
    return effect_from_vector(neuron_output_vector(basis, layer, idx, via), k, via)


def neuron_output_effects(basis, layer: int, via: tuple[int, int] | None = None, k: int = 10,
                          progress: Callable[[int], None] | None = None) -> LayerEffects:
    """Output effects of every neuron in ``layer`` along one path, in neuron chunks."""
    b = make_basis(basis)
    b.check_neuron(layer)
    A, B = _factors(b, layer, via)
    t = chunked_tops(factored_row_fn(A, B), A.shape[0], B.shape[1], k=k, bottom=True, norms=True,
                     progress=progress)
    return LayerEffects(layer, via, t.top, t.bottom, t.norms)
