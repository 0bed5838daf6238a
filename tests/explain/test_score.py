"""Scores against independent computations: scipy's Pearson r on windows found by brute force, and
per-unit ablation by a plain forward with the activation replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from circuitbook.explain.program import ActivationProgram, Clause
from circuitbook.explain.run import resolver_for
from circuitbook.explain.score import (ScoreError, ScoreSettings, balanced_accuracy, check_held_out, collect,
                                       correlation_score, score_units)
from circuitbook.explain.simulate import simulate_activation
from circuitbook.handcraft.evaluate import recovered
from circuitbook.handcraft.spec import TokenSet
from circuitbook.model import run


def test_correlation_and_balanced_accuracy_reference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(size=500)
    b = a * 0.3 + b
    assert correlation_score(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert correlation_score(a, np.ones(500)) == 0.0
    t = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    p = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)
    assert balanced_accuracy(t, p) == pytest.approx((2 / 3 + 4 / 5) / 2)


def _brute_windows(tokens, valid, acts, W):
    """[(seq, [positions])] in (sequence, window) order, and each window's true max."""
    wins = []
    for s in range(tokens.shape[0]):
        pos = [j for j in range(1, tokens.shape[1]) if valid[s, j]]
        for k in range(0, len(pos), W):
            wins.append((s, pos[k:k + W]))
    mx = np.array([max(acts[s, j] for j in ps) for s, ps in wins])
    return wins, mx


@pytest.fixture(scope="module")
def setup(planted0):
    demo, book = planted0["demo"], planted0["book"]
    t = demo.truth
    st = ScoreSettings(ablation_tokens=300)
    ho = collect(demo.model, planted0["held"], {("neuron", 0)}, st)
    n = t["pronoun_verb"]
    reads = [i for i in t["rules"]["pronoun_verb"]["reads"]][:5]  # a deliberately partial explanation
    prog = ActivationProgram([Clause(1.5, TokenSet(ids=reads))], 0.0)
    noise = t["noise_neurons"][0]
    items = [("neuron", 0, n, None, "test", prog), ("neuron", 0, noise, None, "test", prog)]
    scores, _, _ = score_units(demo.model, ho, items, resolver_for(book), st)
    return demo, book, st, ho, items, scores


def test_simulation_score_equals_scipy_on_brute_force_windows(setup):
    demo, book, st, ho, items, scores = setup
    R = resolver_for(book)
    rng = np.random.default_rng(st.seed + 1)
    for (kind, layer, idx, _, _, prog), sc in zip(items, scores):
        acts = ho.acts[("neuron", 0)][..., idx]
        sim = simulate_activation(prog, ho.tokens, R, ho.valid)
        wins, mx = _brute_windows(ho.tokens, ho.valid, acts, st.window)
        rand = np.random.default_rng(st.seed + 1).choice(len(wins), st.n_random, replace=False)
        chosen = list(np.argsort(-mx, kind="stable")[: st.n_top]) + list(rand)
        real = np.concatenate([[acts[wins[w][0], j] for j in wins[w][1]] for w in chosen])
        simv = np.concatenate([[sim[wins[w][0], j] for j in wins[w][1]] for w in chosen])
        assert sc.simulation == pytest.approx(stats.pearsonr(real.astype(np.float64), simv.astype(np.float64))[0],
                                            abs=1e-9)
        assert sc.n_windows == st.n_top + st.n_random
    del rng
    assert scores[0].simulation > 0.3 and abs(scores[1].simulation) < 0.3


def _forward_loss(model, tok, val, replace=None):
    iv = None
    if replace is not None:
        idx, values = replace

        def fn(x):
            x = x.clone()
            x[:, 1:, idx] = values[:, 1:].to(x)
            return x
        iv = {"blocks.0.mlp.hook_post": fn}
    logits = run(model.weights, tok, ("logits",), iv)["logits"][:, :-1].float()
    lp = logits.log_softmax(-1).gather(-1, tok[:, 1:, None])[..., 0]
    m = val[:, 1:] & val[:, :-1]
    return float(-lp[m].double().mean())


def test_ablation_equals_brute_force_forward(setup):
    demo, book, st, ho, items, scores = setup
    R = resolver_for(book)
    model = demo.model
    # the ablation sequences, re-batched from the stories (an independent path to the same tokens)
    tok = torch.as_tensor(ho.tokens[ho.abl_seqs])
    val = torch.as_tensor(ho.valid[ho.abl_seqs])
    acts_all = ho.acts[("neuron", 0)]
    l_orig = _forward_loss(model, tok, val)
    for (kind, layer, idx, _, _, prog), sc in zip(items, scores):
        a = acts_all[..., idx]
        mean = float(a[ho.flat].astype(np.float64).mean())
        sim = torch.as_tensor(simulate_activation(prog, ho.tokens, R, ho.valid)[ho.abl_seqs])
        l_mean = _forward_loss(model, tok, val, (idx, torch.full(tok.shape, mean)))
        l_sim = _forward_loss(model, tok, val, (idx, sim))
        assert sc.carry == pytest.approx(l_mean - l_orig, abs=2e-5)
        assert sc.ablation == pytest.approx(recovered(l_mean, l_sim, l_orig), abs=2e-3)


def test_held_out_refuses_scanned_stories(planted0):
    with pytest.raises(ScoreError, match="read by the book's scan"):
        check_held_out(planted0["book"], planted0["fit"][:5] + planted0["held"][:5])
    assert check_held_out(planted0["book"], planted0["held"])["checked"]
