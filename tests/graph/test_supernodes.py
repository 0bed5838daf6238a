"""Supernodes: collapsed edge weights are exact sums of member edges; auto grouping; bad groups."""

from __future__ import annotations

import itertools

import pytest

from circuitbook.graph import attribute
from circuitbook.graph.render import from_json, to_json, to_svg
from circuitbook.graph.supernodes import Supernode, auto_groups, collapse
from circuitbook.graph.types import GraphError

PROMPT = [0, 5, 17, 3, 44, 9, 21]


@pytest.fixture(scope="module")
def g(neo):
    return attribute(neo, PROMPT, max_nodes=60, max_edges=None, keep_inputs=True)


def _groups(g):
    heads = [n.id for n in g.nodes if n.kind == "head"][:4]
    neurons = [n.id for n in g.nodes if n.kind == "neuron"][:3]
    return [Supernode("hs", heads), Supernode("ns", neurons)]


def test_supernode_edges_are_member_sums(g):
    groups = _groups(g)
    sg = collapse(g, groups)
    owner = {m: f"super/{s.name}" for s in groups for m in s.members}
    lift = lambda i: owner.get(i, i)  # noqa: E731
    for e in sg.edges:  # brute force: sum over every member pair
        want = sum(x.weight for x in g.edges if lift(x.source) == e.source and lift(x.target) == e.target)
        assert e.weight == pytest.approx(want, abs=1e-9)
    pairs = {(e.source, e.target) for e in sg.edges}
    for x in g.edges:  # no edge lost: each maps onto a collapsed edge or is internal
        a, b = lift(x.source), lift(x.target)
        assert (a, b) in pairs or a == b
    total = sum(e.weight for e in g.edges)
    assert sum(e.weight for e in sg.edges) + sg.settings["internal_weight"] == pytest.approx(total, abs=1e-6)
    hs = sg.node("super/hs")
    assert hs.value == pytest.approx(sum(g.node(m).value for m in groups[0].members))
    assert len(sg.nodes) == len(g.nodes) - 7 + 2
    assert "super/hs" in to_svg(sg)
    assert to_json(from_json(to_json(sg))) == to_json(sg)


def test_auto_groups(g):
    n0 = next(n for n in g.nodes if n.kind == "neuron")
    others = [n for n in g.nodes if n.kind == "neuron" and n.index != n0.index][:1]
    for n in g.nodes:  # plant a shared label on two units
        if n.kind == "neuron" and n.index in (n0.index, others[0].index):
            n.label = "planted"
    groups = auto_groups(g, types={("head", 0, 1): "syntax X -> Y"})
    by = {s.name: s for s in groups}
    assert set(by["planted"].members) == {n.id for n in g.nodes if n.label == "planted"}
    heads01 = [n.id for n in g.nodes if n.kind == "head" and n.layer == 0 and n.index == 1]
    if len(heads01) >= 2:
        assert set(by["syntax X -> Y"].members) == set(heads01)
    for s in groups:
        if s.rule == "unit":  # same unit at several positions
            units = {(g.node(m).kind, g.node(m).layer, g.node(m).index) for m in s.members}
            assert len(units) == 1 and len(s.members) >= 2
    seen = list(itertools.chain.from_iterable(s.members for s in groups))
    assert len(seen) == len(set(seen))
    collapse(g, groups)
    for n in g.nodes:
        n.label = None


def test_bad_groups(g):
    with pytest.raises(GraphError, match="names node 'neuron/0/999/3', which is not in the graph"):
        collapse(g, [Supernode("x", ["neuron/0/999/3"])])
    a = next(n.id for n in g.nodes if n.kind == "head")
    with pytest.raises(GraphError, match="in both supernode"):
        collapse(g, [Supernode("x", [a]), Supernode("y", [a])])
