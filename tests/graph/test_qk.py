"""QK attribution: the 16 part-pair terms sum exactly to the forward's centred attention score; planted
positional-only attention reads as positional."""

from __future__ import annotations

import pytest
import torch

from circuitbook.graph import attribute
from circuitbook.graph.qk import graph_qk, qk_attribution
from circuitbook.graph.types import GraphError

PROMPT = [0, 5, 17, 3, 44, 9, 21]


@pytest.mark.parametrize("fixture", ["neo", "gpt2"])
def test_terms_sum_to_the_centred_score(request, fixture):
    m = request.getfixturevalue(fixture)
    for layer, head, q, k in [(0, 1, 6, 2), (1, 2, 5, 5), (1, 0, 6, 4)]:
        a = qk_attribution(m, PROMPT, layer, head, q, k)
        assert sum(a.terms.values()) == pytest.approx(a.centred, abs=1e-4)
        assert sum(a.groups.values()) == pytest.approx(a.centred, abs=1e-4)
        assert sum(a.shares.values()) == pytest.approx(1.0)
        if layer == 0:
            assert all(abs(v) < 1e-6 for t, v in a.terms.items() if "rest" in t)


def test_planted_positional_head(gpt2):
    import copy

    m = copy.deepcopy(gpt2)
    with torch.no_grad():
        m.weights.W_E.zero_()  # no token content at all: layer 0 can only attend by position (and biases)
    a = qk_attribution(m, PROMPT, 0, 1, 6, 2)
    assert a.shares["token_token"] < 1e-9 and a.shares["positional"] > 0.5


def test_graph_heads_and_bad_input(neo):
    g = attribute(neo, PROMPT, max_nodes=20)
    qk = graph_qk(neo, g)
    assert set(qk) == {n.id for n in g.nodes if n.kind == "head"}
    with pytest.raises(GraphError, match="after query"):
        qk_attribution(neo, PROMPT, 0, 0, 2, 4)
    with pytest.raises(GraphError, match="attention window"):
        qk_attribution(neo, PROMPT, 1, 0, 6, 0)  # layer 1 is local (window 3)
