"""Concept search on the demo: the planted searching neuron, and nothing else, reads and promotes the concept."""

from __future__ import annotations

import pytest

from circuitbook.roles.concepts import ConceptError, concept_search, concept_tokens


def test_concept_tokens_inflections():
    strs = [" look", " looked", " Looking", "looks", " lookout", " find", " found", " stop", " stopped", " make",
            " making", "x"]
    got = {strs[i] for i in concept_tokens("look find stop make", strs)}
    assert got == {" look", " looked", " Looking", "looks", " find", " stop", " stopped", " make", " making"}
    assert {strs[i] for i in concept_tokens(["look"], strs, exact=True)} == {" look"}
    with pytest.raises(ConceptError):
        concept_tokens("zzz", strs)


def test_concept_search_finds_the_search_neuron(demo):
    t = demo.truth
    res = concept_search(demo.model, "look search find seek", demo.stories, k=8)
    neurons = [h for h in res.hits if h.kind == "neuron"]
    assert neurons[0].idx == t["search"]
    strong = res.strong()
    assert [(h.kind, h.idx) for h in strong] == [("neuron", t["search"])]  # precision and recall 1.0
    top = neurons[0]
    assert {s for _, s, _ in top.reads} >= {" looked", " searched"}
    assert {s for _, s, _ in top.promotes[:3]} == {" looked", " searched", " seek"}
    assert top.examples and top.examples[0]["tokens"][top.examples[0]["focus"]] in (" looked", " searched")
    assert "N0." in res.table()
    # the same search with the demo's irregular words spelled out
    res2 = concept_search(demo.model, "looked searched found hunted explored seek", demo.stories, k=5)
    assert [(h.kind, h.idx) for h in res2.strong()] == [("neuron", t["search"])]


def test_concept_search_from_token_means(demo_typed):
    from circuitbook.book import roles as bt

    demo, book, _ = demo_typed
    res = concept_search(demo.model, "looked searched hunted", None, k=5, token_means=bt.token_acts(book))
    assert res.hits[0].idx == demo.truth["search"] and res.hits[0].strong
