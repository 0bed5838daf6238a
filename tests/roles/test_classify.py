"""Planted ground truth: the demo's pronoun->verb, article->noun/adj and search neurons, among noise neurons."""

from __future__ import annotations

import numpy as np

from circuitbook.roles.classify import select


def test_typing_recovers_planted_neurons_exactly(demo_typed):
    demo, book, res = demo_typed
    t = demo.truth
    syntax = {u.idx for u in res.types if u.type in ("syntax", "mixed")}
    content = {u.idx for u in res.types if u.type in ("content", "mixed")}
    assert syntax == {t["pronoun_verb"], t["article_noun"]}  # precision and recall 1.0
    assert content == {t["search"]}
    by = {u.idx: u for u in res.types}
    assert by[t["pronoun_verb"]].type == "syntax" and by[t["pronoun_verb"]].rule == "PRON -> VERB"
    lhs, rhs = by[t["article_noun"]].rule.split(" -> ")
    assert lhs == "DET" and set(rhs.split("/")) == {"NOUN", "ADJ"}
    assert by[t["search"]].type == "content" and by[t["search"]].rule == ""
    # evidence: the search neuron reads and promotes the same searching words
    ev = by[t["search"]].evidence
    assert set(ev["content"]["overlap"]) >= set(t["classes"]["SEARCH"]) & {x[0] for x in ev["input"]["tokens"]}
    assert len(ev["content"]["overlap"]) >= 4
    assert all(by[i].confidence > 0.9 for i in (t["pronoun_verb"], t["article_noun"], t["search"]))
    # the pronoun neuron's input set is the demo's pronouns (as they occur in the corpus)
    reads = {x[0] for x in by[t["pronoun_verb"]].evidence["input"]["tokens"]}
    assert reads and reads <= set(t["classes"]["PRON"])


def test_types_stored_and_queryable(demo_typed):
    from circuitbook.book import roles as bt
    from circuitbook.roles.summary import book_summary

    demo, book, res = demo_typed
    t = demo.truth
    assert bt.type_counts(book) == res.summary.counts
    assert sum(res.summary.counts.values()) == demo.model.cfg.d_mlp
    u = bt.unit_type(book, 0, t["pronoun_verb"])
    assert u["type"] == "syntax" and u["rule"] == "PRON -> VERB" and u["evidence"]["input"]["classes"]
    assert [r for r, _ in bt.rules(book)][:2] and dict(bt.rules(book))["PRON -> VERB"] == 1
    assert {d["idx"] for d in bt.unit_types(book, type="syntax")} == {t["pronoun_verb"], t["article_noun"]}
    sec = book.neuron(0, t["search"]).sections["typing"]
    assert sec["type"] == "content"
    assert "content" in book.neuron(0, t["search"])._repr_html_()
    tc = bt.token_classes(book, [demo.model.tokenizer.to_id("Ġlooked")])
    assert list(tc.values())[0]["class"] == "VERB"
    assert book_summary(book).counts == res.summary.counts
    assert "PRON -> VERB" in res.summary.table()


def test_rerun_uses_caches(demo_typed, monkeypatch):
    from circuitbook.roles import run as run_mod

    demo, book, res = demo_typed
    monkeypatch.setattr(run_mod, "token_classes", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retagged")))
    monkeypatch.setattr(run_mod, "activation_means", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    again = run_mod.type_model(demo.model, demo.stories, book=book, progress=False)
    assert [(u.idx, u.type, u.rule) for u in again.types] == [(u.idx, u.type, u.rule) for u in res.types]


def test_select_threshold_and_clipping():
    s = np.array([[5.0, 4.0, 1.0, 0.5, -1.0], [1.0, 1.0, 1.0, 1.0, 1.0], [-1, -2, -3, -4, -5.0]])
    sel = select(s, tau=0.5, k_min=1, k_max=3)
    assert sel[0].tolist() == [True, True, False, False, False]
    assert sel[1].sum() == 3 and sel[2].tolist() == [True, False, False, False, False]
