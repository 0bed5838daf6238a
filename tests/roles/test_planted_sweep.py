"""Typing on models it was not built on: a sweep over generated planted models (``demo.planted``).

Twenty 1-layer GPT-Neos over GPT-2's vocabulary, typed on 300 real TinyStories: seeds 0-19, d_model 256 or
512, 512 to 2,048 neurons, tied or untied unembeddings, 12 planted neurons each (two of every rule kind:
class, union, possessive, fine tag, two rules in one neuron, content) among random-direction noise neurons.
Per rule kind precision and recall must reach 0.95 at FDR 0.05, and the noise false-positive rate stay <= 0.05.
"""

from __future__ import annotations

from itertools import islice

import pytest

from circuitbook.corpus import read_stories
from circuitbook.demo.planted import RULE_KINDS, build_planted, evaluate_typing
from circuitbook.model.tokenizer import Tokenizer
from circuitbook.roles.pos import token_classes
from circuitbook.roles.run import stories_id, type_model

SHAPES = [(256, 512), (256, 1024), (512, 1024), (512, 2048), (256, 2048)]


@pytest.fixture(scope="module")
def corpus(gpt2_tokenizer_dir, stories_path):
    tok = Tokenizer.from_dir(gpt2_tokenizer_dir)
    stories = list(islice(read_stories(stories_path), 300))
    return tok, stories, token_classes(stories, tok, progress=False, source={"corpus": stories_id(stories)})


@pytest.mark.slow
def test_typing_sweep_over_planted_models(corpus):
    tok, stories, tc = corpus
    totals = {k: [0, 0, 0] for k in RULE_KINDS}  # planted, hits, false positives
    noise_typed = noise = 0
    misses = []
    for seed in range(20):
        d_model, d_mlp = SHAPES[seed % len(SHAPES)]
        pl = build_planted(tok, tc, seed, d_model=d_model, d_mlp=d_mlp, n_heads=8, n_rules=12)
        ev = evaluate_typing(pl, type_model(pl.model, stories, classes=tc, progress=False).types, tc)
        for k, v in ev["kinds"].items():
            t = totals[k]
            t[0] += v["n"]
            t[1] += v["hits"]
            t[2] += v["false_positives"]
        noise_typed += ev["noise_typed"]
        noise += ev["noise"]
        misses += [(seed, *m) for m in ev["misses"]]
    table = {k: {"recall": h / n, "precision": h / max(h + fp, 1), "n": n} for k, (n, h, fp) in totals.items()}
    report = f"{table}\nnoise FPR {noise_typed}/{noise}\nmisses {misses}"
    print(report)
    assert all(r["n"] >= 40 for r in table.values()), report
    assert all(r["recall"] >= 0.95 and r["precision"] >= 0.95 for r in table.values()), report
    assert noise_typed / noise <= 0.05, report


def test_planted_truth_is_what_it_claims(corpus):
    """The generator's own contract: planted reads and writes are unambiguous tokens of the named targets, and
    the direct paths single them out among the corpus' tokens (every read token is among the neuron's top
    direct inputs over the tokens seen >= 5 times, every written token among its top direct outputs; random
    embeddings cross-talk, so "top" is twice the set's size)."""
    import numpy as np

    from circuitbook.circuits.basis import make_basis
    from circuitbook.circuits.neuron_in import direct_input
    from circuitbook.circuits.neuron_out import direct_output
    from circuitbook.roles.pos import CLASSES, FINE_TARGETS

    tok, stories, tc = corpus
    pl = build_planted(tok, tc, 101, d_model=512, d_mlp=256, n_rules=6)
    assert sorted({r.kind for r in pl.rules}) == sorted(RULE_KINDS)
    assert sorted([r.neuron for r in pl.rules] + pl.noise) == list(range(256))
    b = make_basis(pl.model.weights)
    seen = np.flatnonzero(tc.n >= 5)
    pre, out = direct_input(b, 0).numpy()[:, seen], direct_output(b, 0).numpy()[:, seen]
    dom = tc.dominant
    for r in pl.rules:
        top_in = set(seen[np.argsort(-pre[r.neuron])[: 2 * len(r.reads)]].tolist())
        top_out = set(seen[np.argsort(-out[r.neuron])[: 2 * len(set(r.writes))]].tolist())
        assert set(r.reads) <= top_in and set(r.writes) <= top_out, r.kind
        if r.expect_type == "syntax":
            assert {CLASSES[dom[t]] for t in r.reads} == set(r.expect_in)
            for t in r.writes:
                tag = tc.dominant_tag(t)
                assert CLASSES[dom[t]] in r.expect_out or any(tag in FINE_TARGETS[x] for x in r.expect_out)
