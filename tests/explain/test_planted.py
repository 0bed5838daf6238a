"""Planted truth on the demo (several seeds): every planted neuron's auto explanation names its planted input
and output sets and simulates it (score >= 0.9); noise neurons score < 0.3; the scorecard with only the
planted units explained recovers >= 0.9 of the MLP's loss."""

from __future__ import annotations

from collections import Counter

from circuitbook.book import explanations as be
from circuitbook.explain import score_book
from circuitbook.explain.scorecard import scorecard

PLANTED = ("pronoun_verb", "article_noun", "search")


def test_planted_explanations_scores_and_scorecard(planted):
    demo, book, fit, held = planted["demo"], planted["book"], planted["fit"], planted["held"]
    t = demo.truth
    tok = demo.model.tokenizer
    seen = Counter(i for s in fit for i in tok.encode(s))
    cur = be.current(book)
    for name in PLANTED:
        prog = cur[("neuron", 0, t[name])]["program"]
        assert len(prog["input"]) == 1, name
        got = set(prog["input"][0]["tokens"]["ids"])
        reads = set(t["rules"][name]["reads"])
        assert got <= reads and got >= {i for i in reads if seen[i] >= 3}, name  # the planted set as it occurs
        assert set(prog["output"]["promote"]["ids"]) == set(t["rules"][name]["writes"]), name
    for n in t["noise_neurons"]:
        assert cur[("neuron", 0, n)]["program"]["input"] == []
    res = score_book(book, demo.model, held)
    by = {(s.kind, s.idx): s for s in res.scores}
    for name in PLANTED:
        s = by[("neuron", t[name])]
        assert s.simulation >= 0.9 and s.detection >= 0.9 and s.ablation >= 0.9, (name, s)
    assert max(abs(by[("neuron", n)].simulation) for n in t["noise_neurons"]) < 0.3
    card = scorecard(book, demo.model, held)
    assert card.n_explained == len(PLANTED)
    assert card.recovered >= 0.9
    assert card.curve[-1]["n"] == len(PLANTED) and card.reach["0.8"] is not None
    runs = be.scorecards(book)
    assert runs[-1]["recovered"] == card.recovered and runs[-1]["n_explained"] == len(PLANTED)
