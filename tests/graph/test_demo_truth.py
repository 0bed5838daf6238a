"""Planted ground truth: on the handcrafted demo model the graph finds the planted neurons and copy head."""

from __future__ import annotations

import pytest

from circuitbook.graph import ablate, attribute


@pytest.fixture(scope="module")
def demo():
    from circuitbook.demo import build_demo

    return build_demo(seed=0)


def _top(g, kind):
    return max((n for n in g.nodes if n.kind == kind), key=lambda n: abs(n.value))


@pytest.mark.parametrize("prompt, rule", [
    ("Once upon a time, there was a dog named Lily. She", "pronoun_verb"),
    ("Once upon a time, there was a dog named Tom. He saw the", "article_noun"),
])
def test_planted_neurons_lead_the_graph(demo, prompt, rule):
    g = attribute(demo.model, prompt, max_nodes=10)
    assert g.target in demo.truth["rules"][rule]["writes"]  # the model predicts what the rule writes
    top = _top(g, "neuron")
    assert (top.index, top.pos) == (demo.truth[rule], g.pos) and top.value > 0.5
    others = [abs(n.value) for n in g.nodes if n.kind == "neuron" and n.index != demo.truth[rule]]
    assert max(others, default=0.0) < 0.1 * top.value  # the noise neurons barely matter
    r = ablate(demo.model, prompt, top.id, g.target)
    assert r.delta < -0.5 * top.value  # knocking it out costs about what the graph says it gives


def test_planted_copy_head(demo):
    prompt = "Once upon a time, there was a dog named Lily. The cat liked"
    g = attribute(demo.model, prompt, " Lily", max_nodes=6)
    src = g.token_strs.index(" Lily")
    head = _top(g, "head")
    assert (head.index, head.src) == (demo.truth["copy_head"], src) and head.value > 1.0
    assert any(e.source == f"input/{src}" and e.target == head.id and e.weight > 1.0 for e in g.edges)
    r = ablate(demo.model, prompt, head.id, " Lily")
    assert r.delta == pytest.approx(-head.value, rel=0.3)
