"""Neuron input effect: which tokens drive an MLP neuron, read off the weights.

Direct path (any layer): the neuron's value when its MLP reads a residual stream holding only the token,
``normalize(W_E[t] + mean W_pos[:pos_window])`` (exactly what ln2 outputs then, in the folded basis):
pre-activation ``hook_pre`` for plain MLPs; for gated MLPs (Llama), where no single pre-activation decides,
the activation ``hook_post = act(x @ W_gate) * (x @ W_in)``.

Through head (l2, h) with l2 <= l (for 1-layer models: every head of the layer): the head attends to source
token t and writes ``embed[t] @ W_V @ W_O``; ln2 (taken as linear with scale ``s_ln2[l]``, see
:mod:`.basis`) passes it to the neuron: contribution to the pre-activation (the gate's, for gated MLPs) per
unit of attention on t: ``embed[t] @ W_V[l2, h] @ W_O[l2, h] @ W_in[l][:, n] / s_ln2[l]``. Heads after layer 0
see the direct-path input.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..model.maths import activation
from .basis import CircuitError, make_basis
from .effects import LayerEffects, TokenEffect, effect_from_vector
from .screened_topk import chunked_tops


def input_paths(cfg, layer: int) -> list[tuple[int, int] | None]:
    """None (direct from the embedding), then (l2, h) for every head of layers <= ``layer``."""
    return [None] + [(l2, h) for l2 in range(layer + 1) for h in range(cfg.n_heads)]


def direct_input(basis, layer: int, start: int = 0, stop: int | None = None, tokens: Tensor | None = None,
                 post: bool = False) -> Tensor:
    """[stop - start, n_tokens] the direct-path value of neurons ``start:stop`` of ``layer`` on each token
    (every token when ``tokens`` is None), read by the MLP from ``basis.embed`` (see the module docstring):
    the pre-activation ``hook_pre`` for plain MLPs, the activation ``hook_post`` with ``post=True``; gated
    MLPs always give ``hook_post``. The one definition of a neuron's token input (typing reads it too)."""
    b = make_basis(basis)
    b.check_neuron(layer)
    w, cfg = b.w, b.cfg
    E = b.embed if tokens is None else b.embed[torch.as_tensor(tokens, device=b.embed.device)]
    lin = E @ w.W_in[layer][:, start:stop] + w.b_in[layer][start:stop]
    if w.W_gate is not None:
        lin = activation(E @ w.W_gate[layer][:, start:stop], cfg.act_fn) * lin
    elif post:
        lin = activation(lin, cfg.act_fn)
    return lin.T


def _row_fn(b, layer: int, via):
    """row_fn(start, stop) -> [neurons start:stop, d_vocab] values along the path."""
    w = b.w
    if via is None:
        return lambda s, e: direct_input(b, layer, s, e)
    l2, h = via
    b.check_head(l2, h)
    if l2 > layer:
        raise CircuitError(f"a layer-{layer} neuron reads heads of layers <= {layer}, not layer {l2}")
    reader = w.W_gate[layer] if w.W_gate is not None else w.W_in[layer]
    A = (w.W_O[l2, h] @ reader).T / b.scales.ln2[layer]  # [d_mlp, d_head]
    B = (b.embed @ w.W_V[l2, h]).T.contiguous()  # [d_head, d_vocab]
    return lambda s, e: A[s:e] @ B


def neuron_input_vector(basis, layer: int, idx: int, via: tuple[int, int] | None = None) -> Tensor:
    """The dense [d_vocab] input effect of one neuron along one path."""
    b = make_basis(basis)
    b.check_neuron(layer, idx)
    return _row_fn(b, layer, via)(idx, idx + 1)[0]


def neuron_input_effect(basis, layer: int, idx: int, via: tuple[int, int] | None = None, k: int = 10) -> TokenEffect:
    """Top-k tokens driving (and most opposing) one neuron, directly or through head ``via`` = (l2, h)."""
    return effect_from_vector(neuron_input_vector(basis, layer, idx, via), k, via)


@torch.inference_mode()
def neuron_input_effects(basis, layer: int, via: tuple[int, int] | None = None, k: int = 10,
                         progress: Callable[[int], None] | None = None) -> LayerEffects:
    """Input effects of every neuron in ``layer`` along one path, in neuron chunks."""
    b = make_basis(basis)
    b.check_neuron(layer)
    t = chunked_tops(_row_fn(b, layer, via), b.cfg.d_mlp, b.cfg.d_vocab, k=k, bottom=True, norms=True,
                     progress=progress)
    return LayerEffects(layer, via, t.top, t.bottom, t.norms)
