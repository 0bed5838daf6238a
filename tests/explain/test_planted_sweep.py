"""Explain and score on models they were not built on: generated planted models (``demo.planted``).

Generated 1-layer GPT-Neos over GPT-2's vocabulary (seeds 0-5, d_model 512 or 768, 512 to 2,048 neurons, tied or
untied unembeddings, 12 planted neurons each: two of every rule kind among random-direction noise neurons),
scanned and typed on the first 200 of 300 real TinyStories, explained from the book, scored on the last 100.
Every planted neuron's auto explanation must name its planted read set and write set (F1 >= 0.8 on the corpus'
tokens, ``evaluate_explanations``) and simulate it (score >= 0.9): 95% of them, all but one per rule kind; noise
neurons must score < 0.3, all but at most 0.1% (the typing gate: a random-direction neuron is a token lookup too,
but not a mechanism, and gets no rule; the few noise neurons typing lets through at FDR 0.05 do get one).
Ablation scores are left to the demo's test (tests/explain/test_planted.py): here they would cost a full
unembedding per neuron for 5,000 noise neurons.

Why d_model >= 512: a written set of k tokens in d dimensions leaves the rest of the vocabulary a random
cross-talk of relative size sqrt(k / d); at d 256 and k 12-21 its maximum over GPT-2's 50k tokens (and even over
the corpus' few thousand) reaches the written tokens' own effect, so the planted set is no longer what the model
promotes, and no explainer can name it."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from circuitbook.book import Book
from circuitbook.book import explanations as be
from circuitbook.corpus import read_stories
from circuitbook.demo.planted import RULE_KINDS, build_planted, evaluate_explanations
from circuitbook.explain import explain_book, score_book
from circuitbook.explain.score import ScoreSettings
from circuitbook.model.tokenizer import Tokenizer
from circuitbook.roles.pos import token_classes
from circuitbook.roles.run import stories_id, type_model
from circuitbook.scan import scan_corpus

SHAPES = [(512, 1024), (512, 2048), (768, 1024), (512, 512)]
N_MODELS = 6


@pytest.fixture(scope="module")
def corpus(gpt2_tokenizer_dir, stories_path):
    tok = Tokenizer.from_dir(gpt2_tokenizer_dir)
    stories = list(islice(read_stories(stories_path), 300))
    fit, held = stories[:200], stories[200:]
    tc = token_classes(fit, tok, progress=False, source={"corpus": stories_id(fit)})
    return tok, fit, held, tc, Counter(i for s in fit for i in tok.encode(s))


@pytest.mark.slow
def test_explain_and_score_sweep_over_planted_models(corpus, tmp_path):
    tok, fit, held, tc, seen = corpus
    totals = {k: Counter() for k in RULE_KINDS}
    noise_over = noise_scored = 0
    noise_max = 0.0
    misses, f1 = [], []
    for seed in range(N_MODELS):
        d_model, d_mlp = SHAPES[seed % len(SHAPES)]
        pl = build_planted(tok, tc, seed, d_model=d_model, d_mlp=d_mlp, n_heads=8, n_rules=12)
        book = Book.open(tmp_path / f"m{seed}.db")
        scan_corpus(pl.model, fit, book, k=16, progress=False)
        type_model(pl.model, fit, book=book, classes=tc, progress=False)
        explain_book(book, pl.model)
        res = score_book(book, pl.model, held, ScoreSettings(ablation=False))
        ev = evaluate_explanations(pl, be.current(book), res.scores, seen)
        for k, v in ev["kinds"].items():
            totals[k].update(v)
        noise_over += ev["noise_over"]
        noise_scored += ev["noise_scored"]
        noise_max = max(noise_max, ev["noise_max"])
        misses += [(seed, *m) for m in ev["misses"]]
        f1 += ev["f1"]
        book.close()
    table = {k: {f: v[f] for f in ("n", "named_in", "named_out", "simulated", "hits")} for k, v in totals.items()}
    low = {k: (min(a for kk, a, _ in f1 if kk == k), min(b for kk, _, b in f1 if kk == k)) for k in RULE_KINDS}
    report = (f"{table}\nlowest F1 (input, output) per kind {low}\n"
              f"noise: {noise_over} of {noise_scored} scored >= 0.3, max {noise_max:.3f}\nmisses {misses}")
    print(report)
    assert all(v["n"] == 2 * N_MODELS for v in table.values()), report  # 12 rules: two of each kind
    # a write set of k tokens leaves the rest of the vocabulary a cross-talk of relative size sqrt(k / d) (0.15 at
    # k 12, d 512); over the corpus' few thousand tokens its maximum can pass half the written tokens' effect, and
    # then a promoted set rightly holds a token the rule was not meant to write: allow one such rule per kind
    assert all(v["hits"] >= v["n"] - 1 for v in table.values()), report
    assert sum(v["hits"] for v in table.values()) >= 0.95 * sum(v["n"] for v in table.values()), report
    assert noise_scored == sum(SHAPES[s % len(SHAPES)][1] - 12 for s in range(N_MODELS)), report
    # a noise neuron typing lets through (its false-positive rate is ~1e-4 at FDR 0.05) gets a rule, and a
    # random-direction neuron's token rule simulates it: allow that rate, no more
    assert noise_over <= 0.001 * noise_scored, report
