"""Export to the Neuronpedia / circuit-tracer graph JSON, validated against their documented fields
(circuit_tracer/frontend/graph_models.py: Metadata, QParams, Node, Link, Model, written out here as pydantic
models with extra fields forbidden), and import back for display."""

from __future__ import annotations

from typing import List

import pytest
from pydantic import BaseModel, ConfigDict

from circuitbook.graph import attribute, to_svg
from circuitbook.graph.exchange import export_graph, import_graph, import_supernodes
from circuitbook.graph.supernodes import Supernode, collapse
from circuitbook.graph.types import GraphError

PROMPT = [0, 5, 17, 3, 44, 9, 21]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(Strict):
    slug: str
    scan: str
    transcoder_list: List[str]
    prompt_tokens: List[str]
    prompt: str
    node_threshold: float | None = None


class QParams(Strict):
    pinnedIds: List[str]
    supernodes: List[List[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(Strict):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class Link(Strict):
    source: str
    target: str
    weight: float


class GraphFile(Strict):
    metadata: Metadata
    qParams: QParams
    nodes: List[Node]
    links: List[Link]


@pytest.fixture(scope="module")
def g(neo):
    g = attribute(neo, PROMPT, max_nodes=30, max_edges=120, keep_inputs=True)
    for n in g.nodes:
        if n.kind == "neuron":
            n.label = "a label"
    return g


def test_export_matches_their_schema(g):
    heads = [n.id for n in g.nodes if n.kind == "head"][:3]
    d = export_graph(g, "slug", "the prompt", [Supernode("heads", heads)])
    m = GraphFile.model_validate(d)
    ids = [n.node_id for n in m.nodes]
    assert len(ids) == len(set(ids)) == len(g.nodes)
    assert {l.source for l in m.links} | {l.target for l in m.links} <= set(ids)
    assert m.qParams.supernodes[0][0] == "heads" and len(m.qParams.supernodes[0]) == 4
    assert sum(n.is_target_logit for n in m.nodes) == 1
    assert [n.clerp for n in m.nodes if n.feature_type == "mlp neuron"] == ["a label"] * sum(
        n.kind == "neuron" for n in g.nodes)
    assert sorted(l.weight for l in m.links) == sorted(e.weight for e in g.edges)
    assert {n.feature_type for n in m.nodes} == {"embedding", "attention head", "mlp neuron", "logit"}


def test_import_round_trip(g):
    heads = [n.id for n in g.nodes if n.kind == "head"][:3]
    d = export_graph(g, "slug", "p", [Supernode("heads", heads)])
    back = import_graph(d)
    assert len(back.nodes) == len(g.nodes) and len(back.edges) == len(g.edges)
    assert back.tokens == g.tokens and back.node("logit").index == g.target
    assert sorted(e.weight for e in back.edges) == sorted(e.weight for e in g.edges)
    [[name, *members]] = import_supernodes(d)
    sg = collapse(back, [Supernode(name, members)])
    assert "super/heads" in to_svg(sg)
    with pytest.raises(GraphError, match="not a circuit-tracer graph"):
        import_graph({"nodes": []})
