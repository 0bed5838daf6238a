"""Simulation against a brute-force reading of the program, position by position."""

from __future__ import annotations

import numpy as np

from circuitbook.explain.program import ActivationProgram, AttentionProgram, Clause
from circuitbook.explain.simulate import Resolver, simulate_activation, simulate_pattern
from circuitbook.handcraft.spec import TokenSet


def _brute(prog, toks, valid, sets):
    out = np.full(toks.shape, prog.baseline, np.float32)
    for s in range(toks.shape[0]):
        for j in range(toks.shape[1]):
            if not valid[s, j]:
                continue
            for c in prog.clauses:
                ok = c.tokens is None or toks[s, j] in sets[id(c.tokens)]
                if c.prev is not None:
                    ok &= j >= 1 and valid[s, j - 1] and toks[s, j - 1] in sets[id(c.prev)]
                if c.earlier is not None:
                    ok &= any(toks[s, i] in sets[id(c.earlier)] and valid[s, i] for i in range(max(0, j - c.within), j))
                if ok:
                    out[s, j] = c.scale
                    break
    return out


def test_activation_matches_brute_force():
    rng = np.random.default_rng(0)
    strs = [f"t{i}" for i in range(12)]
    R = Resolver(strs, {"A": [1, 2, 3]})
    a, b, e = TokenSet(cls="A"), TokenSet(ids=[4, 5]), TokenSet(words=["t7"])
    prog = ActivationProgram([Clause(3.0, a, prev=b), Clause(2.0, None, earlier=e, within=3), Clause(1.0, b)], -0.5)
    toks = rng.integers(0, 12, (5, 30))
    valid = np.ones(toks.shape, bool)
    valid[2, 20:] = False
    sets = {id(a): {1, 2, 3}, id(b): {4, 5}, id(e): {7}}
    got = simulate_activation(prog, toks, R, valid)
    np.testing.assert_array_equal(got, _brute(prog, toks, valid, sets))
    assert (got == 3.0).any() and (got == 2.0).any() and (got == 1.0).any()


def test_patterns_rows_sum_to_one_and_follow_the_rule():
    R = Resolver([f"t{i}" for i in range(6)])
    toks = np.array([[0, 1, 2, 1, 3, 1]])
    p = simulate_pattern(AttentionProgram("previous"), toks, R)[0]
    assert np.allclose(p.sum(-1), 1) and p[3, 2] == 1 and p[0, 0] == 1
    s = simulate_pattern(AttentionProgram("same_token"), toks, R)[0]
    assert np.allclose(s[5, [1, 3, 5]], 1 / 3) and s[5].sum() == 1 and s[2, 2] == 1
    k = simulate_pattern(AttentionProgram(TokenSet(ids=[3])), toks, R)[0]
    assert k[2, 0] == 1 and k[5, 4] == 1  # nothing to attend to yet -> position 0
    assert np.allclose(simulate_pattern(AttentionProgram("bos"), toks, R)[0][:, 0], 1)
