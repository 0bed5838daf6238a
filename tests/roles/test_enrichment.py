"""Enrichment statistics against brute-force definitions."""

from __future__ import annotations

from math import comb, log

import numpy as np

from circuitbook.roles.enrichment import bh, enrichment


def test_hypergeometric_p_and_log_odds_brute_force():
    rng = np.random.default_rng(0)
    N, C = 40, 4
    classes = rng.integers(0, C, N)
    sel = np.zeros((5, N), dtype=bool)
    for r in range(5):
        sel[r, rng.choice(N, 3 + 2 * r, replace=False)] = True
    e = enrichment(sel, classes, C)
    for r in range(5):
        K = sel[r].sum()
        for c in range(C):
            M = (classes == c).sum()
            k = (sel[r] & (classes == c)).sum()
            brute = sum(comb(M, j) * comb(N - M, K - j) for j in range(k, min(K, M) + 1)) / comb(N, K)
            assert np.isclose(e.p[r, c], brute if k > 0 else 1.0)
            lor = log((k + .5) * (N - M - K + k + .5) / ((K - k + .5) * (M - k + .5)))
            assert np.isclose(e.log_odds[r, c], lor)


def test_bh_matches_definition():
    rng = np.random.default_rng(1)
    p = rng.random(50) ** 3
    q = bh(p)
    m = len(p)
    for i in range(m):
        brute = min(min(1.0, p[j] * m / (np.sum(p <= p[j]))) for j in range(m) if p[j] >= p[i])
        assert np.isclose(q[i], brute)
    assert bh(np.array([])).size == 0
