"""Unit kinds: the one registry every stage reads instead of spelling out "neuron" and "head".

A *unit* is anything the book keeps findings about: an MLP neuron, an attention head, and (registered by
the dictionary stage) a dictionary feature. A unit is addressed by ``UnitRef(kind, layer, idx)``:

    kind    a registered kind name ("neuron", "head", ...): the first segment of every key and URL
    layer   the layer the unit lives in (kinds grouped otherwise, such as dictionary features, use this
            slot for their group: the dictionary's number in the book)
    idx     the unit's index inside its layer/group, in [0, kind.count(cfg, layer))

Spellings (all stable: stored in books, used in URLs and graph node ids):

    path    "neuron/0/22"   URL segment and graph node prefix        UnitRef.path / parse_unit
    key     "N0.22"         short key in tables and listings         UnitRef.key  / parse_unit
    tuple   ("neuron", 0, 22)   what the book's tables store (kind, layer, idx)

Each :class:`UnitKind` says how its activation is tapped (a tap name of ``model/forward.py`` and the axis that
indexes units), how it writes to the residual stream (the rows of weights its activation multiplies), how
many there are per layer, how it is keyed, titled and ordered in listings, and which family of scan
statistics describes it (``"activation"``: one number per token; ``"attention"``: a pattern over keys).

Adding a kind is one module that calls :func:`register_unit_kind` at import time; a duplicate name or
letter is an error (as SAELens's architecture registry does). The built-in kinds are registered below.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping

from .errors import CircuitbookError


class UnitError(CircuitbookError, ValueError):
    """An unknown unit kind, a malformed unit key, or a unit the model does not have."""


def _cfg_get(cfg: Any, name: str) -> Any:
    """A config value from a ModelConfig or the dict the book stores (``book.config``)."""
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


@dataclasses.dataclass(frozen=True)
class UnitKind:
    """One kind of unit and everything a stage needs to know about it."""

    name: str
    """Registry name, the first segment of paths ("neuron/0/22") and the ``kind`` column of the book."""
    letter: str
    """One upper-case letter that starts the short key ("N" -> "N0.22"); unique across kinds."""
    title: str
    """What a person calls one of them ("neuron", "attention head")."""
    count: Callable[[Any, int], int]
    """``count(cfg, layer)``: units in a layer/group; cfg is a ModelConfig or the book's config dict."""
    tap: str
    """Activation tap (``model/forward.py`` name) with ``{layer}``: e.g. "blocks.{layer}.mlp.hook_post"."""
    unit_axis: int
    """Axis of the tapped tensor that indexes units ([batch, pos, unit(, ...)] -> 2)."""
    writes: str
    """How the activation writes to the residual stream, in words and shapes (for docs and tooltips)."""
    write_weights: Callable[[Any, int, int], Any] | None
    """``write_weights(weights, layer, idx)`` -> the rows the activation multiplies into the residual
    stream, [n, d_model] (a neuron: its W_out row as [1, d_model]; a head: W_O[l][h], [d_head, d_model])."""
    stats: str
    """Family of scan statistics: "activation" (one value per token) or "attention" (a pattern per query)."""
    order: int
    """Sort position among kinds in listings (smaller first)."""
    sublayer: int
    """Where in a layer the unit writes: 1 attention, 2 MLP (graph rows are ``2 * layer + sublayer``)."""
    layers: Callable[[Any], int] = lambda cfg: int(_cfg_get(cfg, "n_layers"))
    """``layers(cfg)``: how many layers/groups the model has for this kind."""

    # ---------------------------------------------------------------- spellings
    def key(self, layer: int, idx: int) -> str:
        return f"{self.letter}{layer}.{idx}"

    def path(self, layer: int, idx: int) -> str:
        return f"{self.name}/{layer}/{idx}"

    def tap_name(self, layer: int) -> str:
        return self.tap.format(layer=layer)

    # ---------------------------------------------------------------- enumeration and checks
    def refs(self, cfg: Any, layer: int | None = None) -> Iterator["UnitRef"]:
        """Every unit of this kind in the model (one layer if ``layer`` is given), in order."""
        for l in range(self.layers(cfg)):
            if layer in (None, l):
                for i in range(self.count(cfg, l)):
                    yield UnitRef(self.name, l, i)

    def check(self, cfg: Any, layer: int, idx: int) -> None:
        """Raise UnitError unless the model described by ``cfg`` has this unit."""
        n_layers = self.layers(cfg)
        if not (isinstance(layer, int) and 0 <= layer < n_layers):
            raise UnitError(f"no {self.title} {layer}.{idx}: the model has {n_layers} layer(s)")
        size = self.count(cfg, layer)
        if not (isinstance(idx, int) and 0 <= idx < size):
            raise UnitError(f"no {self.title} {layer}.{idx}: layer {layer} has {size} {self.title}s "
                            f"(0..{size - 1})")


_KINDS: dict[str, UnitKind] = {}


def register_unit_kind(kind: UnitKind) -> UnitKind:
    """Make ``kind`` known to every stage. A name or letter already registered is an error."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", kind.name):
        raise UnitError(f"unit kind name {kind.name!r}: use lower-case letters, digits and '_'")
    if not re.fullmatch(r"[A-Z]", kind.letter):
        raise UnitError(f"unit kind {kind.name!r}: letter must be one upper-case letter, not {kind.letter!r}")
    if kind.name in _KINDS:
        raise UnitError(f"unit kind {kind.name!r} is already registered")
    clash = [k.name for k in _KINDS.values() if k.letter == kind.letter]
    if clash:
        raise UnitError(f"unit kind {kind.name!r}: letter {kind.letter!r} is already used by {clash[0]!r}")
    if kind.stats not in ("activation", "attention"):
        raise UnitError(f"unit kind {kind.name!r}: stats must be 'activation' or 'attention'")
    _KINDS[kind.name] = kind
    return kind


def unregister_unit_kind(name: str) -> None:
    """Forget a kind (for tests that register an example kind)."""
    _KINDS.pop(name, None)


def unit_kind(name: str) -> UnitKind:
    """The registered kind called ``name`` (UnitError naming the known kinds otherwise)."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise UnitError(f"unknown unit kind {name!r}; known kinds: {', '.join(_KINDS)}") from None


def unit_kinds() -> list[UnitKind]:
    """Every registered kind, in listing order."""
    return sorted(_KINDS.values(), key=lambda k: (k.order, k.name))


def kind_names() -> tuple[str, ...]:
    return tuple(k.name for k in unit_kinds())


@dataclasses.dataclass(frozen=True, order=True)
class UnitRef:
    """One unit's address. Orders by (kind, layer, idx); see :func:`sort_key` for listing order."""

    kind: str
    layer: int
    idx: int

    @property
    def spec(self) -> UnitKind:
        return unit_kind(self.kind)

    @property
    def key(self) -> str:
        return self.spec.key(self.layer, self.idx)

    @property
    def path(self) -> str:
        return self.spec.path(self.layer, self.idx)

    def astuple(self) -> tuple[str, int, int]:
        return (self.kind, self.layer, self.idx)

    def __str__(self) -> str:
        return self.path


def unit_key(kind: str, layer: int, idx: int) -> str:
    """The short key ("N0.22") of a unit."""
    return unit_kind(kind).key(layer, idx)


def sort_key(kind: str, layer: int, idx: int) -> tuple[int, int, int]:
    """Listing order: kinds by their ``order``, then layer, then index."""
    return (unit_kind(kind).order, layer, idx)


def all_units(cfg: Any, kind: str | None = None, layer: int | None = None) -> Iterator[UnitRef]:
    """Every unit of the model (of one kind / one layer if given), kinds in listing order."""
    for k in unit_kinds():
        if kind in (None, k.name):
            yield from k.refs(cfg, layer)


_PATH = re.compile(r"([a-z][a-z0-9_]*)[/:](\d+)[/:](\d+)")
_KEY = re.compile(r"([A-Z])(\d+)\.(\d+)")


def parse_unit(text: str) -> UnitRef:
    """A UnitRef from "neuron/0/22", "neuron:0:22" or "N0.22" (UnitError if malformed or unknown)."""
    s = str(text).strip()
    m = _PATH.fullmatch(s)
    if m:
        unit_kind(m.group(1))
        return UnitRef(m.group(1), int(m.group(2)), int(m.group(3)))
    m = _KEY.fullmatch(s)
    if m:
        for k in _KINDS.values():
            if k.letter == m.group(1):
                return UnitRef(k.name, int(m.group(2)), int(m.group(3)))
        raise UnitError(f"unit key {s!r}: no unit kind has the letter {m.group(1)!r}")
    raise UnitError(f"unit {s!r}: expected kind/layer/index (e.g. neuron/0/22) or a key such as N0.22")


# -------------------------------------------------------------------- the built-in kinds
NEURON = register_unit_kind(UnitKind(
    name="neuron", letter="N", title="neuron",
    count=lambda cfg, layer: int(_cfg_get(cfg, "d_mlp")),
    tap="blocks.{layer}.mlp.hook_post", unit_axis=2,
    writes="activation x W_out[layer][idx] ([d_model]) into the residual stream after the MLP",
    write_weights=lambda w, layer, idx: w.W_out[layer][idx:idx + 1],
    stats="activation", order=0, sublayer=2,
))

HEAD = register_unit_kind(UnitKind(
    name="head", letter="H", title="head",
    count=lambda cfg, layer: int(_cfg_get(cfg, "n_heads")),
    tap="blocks.{layer}.attn.hook_z", unit_axis=2,
    writes="z [d_head] (pattern-weighted values) x W_O[layer][idx] ([d_head, d_model]) into the residual stream",
    write_weights=lambda w, layer, idx: w.W_O[layer][idx],
    stats="attention", order=1, sublayer=1,
))
