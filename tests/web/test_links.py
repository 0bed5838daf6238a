"""The one URL function of the web layer: server links, static export file names, graph node links."""

from __future__ import annotations

from circuitbook.graph import Node
from circuitbook.web.links import node_url, unit_url


def _node(kind, layer=0, index=5, pos=3, src=None):
    return Node(f"{kind}/x", kind, layer, index, pos, src, " a", 0.5, 0.0, None)


def test_unit_url_server_and_static():
    assert unit_url("neuron", 0, 5) == "/neuron/0/5"
    assert unit_url("head", 1, 3) == "/head/1/3"
    assert unit_url("neuron", 0, 5, root="../../", static=True) == "../../neuron/0/5.html"
    assert unit_url("head", 0, 7, root="", static=True) == "head/0/7.html"


def test_node_url_for_units_only():
    assert node_url(_node("neuron", 0, 896)) == "/neuron/0/896"
    assert node_url(_node("head", 0, 3, pos=7, src=2)) == "/head/0/3"  # the head, not its (q, k) instance
    assert node_url(_node("input", -1, 464)) is None
    assert node_url(_node("logit", 1, 464)) is None
    assert node_url(_node("neuron", 1, 2), root="../", static=True) == "../neuron/1/2.html"
