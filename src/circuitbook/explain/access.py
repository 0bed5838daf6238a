"""How the scorer reads a unit's activation and splices a replacement in, per unit kind.

Activation kinds (stats "activation": neurons, and any kind whose tap is a forward tap with the unit on
``unit_axis``) are read from ``kind.tap`` and replaced there. Heads (stats "attention") are read as their
attention pattern (``blocks.{l}.attn.hook_pattern``, [b, head, q, k]) and simulated by replacing that
pattern; their mean ablation replaces the head's output (``hook_result``) by its mean. A kind whose
activation is not a forward tap (a dictionary feature) registers its own :class:`Access`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from ..units import unit_kind


@dataclasses.dataclass
class Access:
    """read_tap(layer) -> the tap holding the units' activations; read(tensor, idx) -> [b, p] (activation)
    or [b, q, k] (pattern); replace(layer, idx, values) -> {tap: fn} interventions that put ``values``
    (shaped like read's output) in place of the unit's activation."""

    read_tap: Callable[[int], str]
    read: Callable[[Tensor, int], Tensor] | None
    replace: Callable[[int, list[int], list[Tensor]], dict] | None
    """None: the scorer cannot splice a replacement in through the forward (only the exact fast path)."""
    acts: Callable[[dict, int], Tensor] | None = None
    """For activations computed from taps rather than being one (dictionary features): (the forward's taps,
    layer) -> [batch, pos, units]. None: ``out[read_tap(layer)]`` with the unit on the kind's ``unit_axis``."""
    taps: Callable[[int], list[str]] | None = None
    """The forward taps ``acts`` reads (None: ``[read_tap(layer)]``)."""
    write_row: Callable[[int, int], Tensor] | None = None
    """(layer, idx) -> the one residual-stream row ([d_model]) the unit's activation multiplies, for kinds
    whose units write only that (None: the kind's ``write_weights``)."""
    write_layer: Callable[[int], int] | None = None
    """(layer) -> the model layer whose output that row is added to (None: ``layer`` itself)."""
    write_tap: Callable[[int], str] | None = None
    """(layer) -> the forward tap the units' writes are part of, where a change of activation ``delta``
    becomes ``+ delta x row`` (the scorecard's splice for kinds with ``write_row``: dictionary features)."""

    def tap_list(self, layer: int) -> list[str]:
        return list(self.taps(layer)) if self.taps is not None else [self.read_tap(layer)]


def _activation_access(kind: str) -> Access:
    spec = unit_kind(kind)
    ax = spec.unit_axis

    def read(x: Tensor, idx: int) -> Tensor:
        return x.select(ax, idx)

    def replace(layer: int, idxs: list[int], values: list[Tensor]) -> dict:
        def fn(x: Tensor) -> Tensor:
            x = x.clone()
            for i, v in zip(idxs, values):
                x.select(ax, i).copy_(v.to(x))
            return x
        return {spec.tap_name(layer): fn}

    return Access(spec.tap_name, read, replace)


def _head_access() -> Access:
    def read(x: Tensor, idx: int) -> Tensor:
        return x[:, idx]

    def replace(layer: int, idxs: list[int], values: list[Tensor]) -> dict:
        def fn(x: Tensor) -> Tensor:
            x = x.clone()
            for i, v in zip(idxs, values):
                x[:, i] = v.to(x)
            return x
        return {f"blocks.{layer}.attn.hook_pattern": fn}

    return Access(lambda layer: f"blocks.{layer}.attn.hook_pattern", read, replace)


ACCESS: dict[str, Access] = {"head": _head_access()}


def register_access(kind: str, access: Access) -> None:
    ACCESS[kind] = access


def scorable(kind: str) -> bool:
    """Whether the scorer can read the kind's activations: a registered Access, or an activation kind whose
    tap indexes its units (``unit_axis`` >= 0; a dictionary feature's tap does not)."""
    spec = unit_kind(kind)
    return kind in ACCESS or (spec.stats == "activation" and spec.unit_axis >= 0)


def access(kind: str) -> Access:
    a = ACCESS.get(kind)
    if a is not None:
        return a
    if scorable(kind):
        return _activation_access(kind)
    from .score import ScoreError

    raise ScoreError(f"the scorer cannot read units of kind {kind!r} (register an explain.access.Access)")


def mean_replacement(kind: str, layer: int, idxs: list[int], means: list[Tensor]) -> dict:
    """Interventions that mean-ablate units: activation kinds take their mean activation; heads their
    mean output (``means`` [d_model] each) in ``hook_result``."""
    if unit_kind(kind).stats == "activation":
        acc = access(kind)
        spec = unit_kind(kind)

        def fn(x: Tensor) -> Tensor:
            x = x.clone()
            for i, m in zip(idxs, means):
                sl = x.select(spec.unit_axis, i)
                sl[:, 1:] = m.to(x)  # position 0 (BOS) keeps its activation
            return x
        return {acc.read_tap(layer): fn}

    def hfn(x: Tensor) -> Tensor:
        x = x.clone()
        for i, m in zip(idxs, means):
            x[:, 1:, i] = m.to(x)
        return x
    return {f"blocks.{layer}.attn.hook_result": hfn}


def merge(*ivs: dict) -> dict:
    """Combine intervention dicts; two on the same tap are chained in order."""
    out: dict = {}
    for iv in ivs:
        for k, fn in iv.items():
            if k in out:
                f0 = out[k]
                out[k] = (lambda a, b: (lambda x: b(a(x))))(f0, fn)
            else:
                out[k] = fn
    return out


def as_tensor(a, like: Tensor) -> Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)
