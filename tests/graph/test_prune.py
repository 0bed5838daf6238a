"""Influence pruning: influence equals the closed form l((I-N)^-1 - I), kept + dropped == total, planted paths."""

from __future__ import annotations

import pytest
import torch

from circuitbook.graph import attribute
from circuitbook.graph.prune import _matrix, influence, normalize, prune_by_influence
from circuitbook.graph.types import Edge, Graph, GraphError, Node

PROMPT = [0, 5, 17, 3, 44, 9, 21]


@pytest.fixture(scope="module")
def full(neo):
    return attribute(neo, PROMPT, max_nodes=120, max_edges=None, keep_inputs=True)


def test_influence_is_the_closed_form(full):
    A, l = _matrix(full, [n.id for n in full.nodes], full.edges)
    N = normalize(A)
    closed = l @ (torch.linalg.inv(torch.eye(N.shape[0], dtype=N.dtype) - N) - torch.eye(N.shape[0], dtype=N.dtype))
    assert torch.allclose(influence(N, l), closed, atol=1e-10)


def test_kept_plus_dropped_is_total(full):
    pg, r = prune_by_influence(full)
    assert abs(r.kept + r.dropped - r.total) < 1e-9 * max(1.0, r.total)
    assert 0 < r.retained <= 1 and r.nodes_after < r.nodes_before and r.edges_after < r.edges_before
    ids = {n.id for n in pg.nodes}
    assert {n.id for n in full.nodes if n.kind in ("input", "logit")} <= ids
    for n in pg.nodes:  # every kept unit node reads and writes through kept edges
        if n.kind in ("head", "neuron"):
            assert any(e.source == n.id for e in pg.edges) and any(e.target == n.id for e in pg.edges)
    assert all(e.source in ids and e.target in ids for e in pg.edges)
    assert 0 <= r.replacement <= 1 and 0 <= r.completeness_pruned <= r.completeness + 1e-12 <= 1 + 1e-12
    # keeping every share keeps every node with influence
    _, r1 = prune_by_influence(full, 1.0, 1.0)
    assert r1.nodes_after >= r.nodes_after


def _node(i, kind, layer, value, pos=0):
    return Node(i, kind, layer, 0, pos, None, "t", value, 0.0, None)


def test_planted_heavy_path_is_kept_light_dropped():
    nodes = [_node("input/0", "input", -1, 5.0), _node("input/1", "input", -1, 0.01, 1),
             Node("neuron/0/1/0", "neuron", 0, 1, 0, None, "t", 5.0, 0, 1.0),
             Node("neuron/0/2/0", "neuron", 0, 2, 0, None, "t", 0.01, 0, 1.0),
             _node("logit", "logit", 1, 5.01)]
    edges = [Edge("input/0", "neuron/0/1/0", 5.0), Edge("input/1", "neuron/0/2/0", 0.01),
             Edge("neuron/0/1/0", "logit", 5.0), Edge("neuron/0/2/0", "logit", 0.01)]
    g = Graph("m", [0, 1], ["a", "b"], 0, 0, "t", None, None, 5.01, {}, {}, nodes, edges, 1, 4)
    pg, r = prune_by_influence(g)
    assert {n.id for n in pg.nodes} == {"input/0", "input/1", "neuron/0/1/0", "logit"}
    # hand computation: logit reads 5 and 0.01 -> shares 5/5.01, 0.01/5.01; neuron 1 passes all to input 0
    assert r.influence["neuron/0/1/0"] == pytest.approx(5 / 5.01)
    assert r.influence["input/0"] == pytest.approx(5 / 5.01)
    assert r.kept == pytest.approx(2 * 5 / 5.01 + 0.01 / 5.01)


def test_bad_share(full):
    with pytest.raises(GraphError, match="node share"):
        prune_by_influence(full, 1.5)
