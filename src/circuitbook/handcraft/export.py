"""A handcraft spec written from the book's labels (``export_spec``): edit the result and build it."""

from __future__ import annotations

import re

from .spec import Direction, NeuronSpec, OutputRule, Spec, TokenSet


def export_spec(book, classes: dict[str, list[int]] | None = None, name: str = "from-book") -> Spec:
    """A spec from the book's labelled neurons (heads are kept: their labels rarely say enough).

    A neuron labelled "A -> B" (or "A→B", "A to B") where A and B are known classes becomes a class rule
    replacing it (input class A, promote class B); any other labelled neuron is kept as its own weights
    (direction rules), so the spec still names it. Edit the result and build it."""
    known = set(classes or {})
    spec = Spec(name=name, description=f"exported from {getattr(book, 'path', 'the book')}")
    for u in book.labelled("neuron"):
        m = re.match(r"^\s*([\w.-]+)\s*(?:->|→|to)\s*([\w.-]+)\s*$", u.label)
        where = f"book: neuron {u.layer}.{u.idx} ({u.label!r})"
        if m and m.group(1) in known and m.group(2) in known:
            spec.neurons.append(NeuronSpec(input=TokenSet(cls=m.group(1), where=where),
                                           output=OutputRule(promote=TokenSet(cls=m.group(2), where=where)),
                                           name=u.label, layer=u.layer, replaces=u.idx, where=where))
        else:
            spec.neurons.append(NeuronSpec(input=Direction(neuron=u.idx, where=where),
                                           output=OutputRule(direction=Direction(neuron=u.idx, where=where)),
                                           name=u.label, layer=u.layer, replaces=u.idx, bias="keep", where=where))
    spec.text = spec.to_yaml()
    return spec
