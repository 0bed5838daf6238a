"""Rule targets, side naming, the screen-then-confirm decision and the calibration on null units, each against
a brute-force or closed-form computation on small shapes."""

from __future__ import annotations

import numpy as np
from scipy.stats import hypergeom, norm

from circuitbook.roles.classify import Settings, _screen_confirm, calibrate, empirical_p, side_tests
from circuitbook.roles.enrichment import bh, stratified_enrichment, target_enrichment
from circuitbook.roles.pos import CLASSES
from circuitbook.roles.targets import build_targets, side_classes, union_name

C = {c: i for i, c in enumerate(CLASSES)}


def _universe(n_per=40, seed=0):
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(len(CLASSES)), n_per)
    rng.shuffle(cls)
    tags = ["VBD" if c == C["VERB"] and i % 2 else "NN" for i, c in enumerate(cls)]
    return cls, tags


def test_targets_families_and_names():
    cls, tags = _universe()
    T = build_targets(cls, tags)
    assert T.names[:12] == list(CLASSES) and T.family.count("union") == 45
    assert "VBD" in T.names and "NNS" not in T.names  # fine targets need members
    i = T.names.index(union_name(["NOUN", "ADJ"]))
    assert T.names[i] == "NOUN/ADJ" and side_classes("NOUN/ADJ") == {"NOUN", "ADJ"}
    assert np.array_equal(T.masks[i], (cls == C["NOUN"]) | (cls == C["ADJ"]))
    assert np.array_equal(T.masks[T.names.index("VBD")], np.array(tags) == "VBD")


def test_target_enrichment_matches_hypergeometric():
    cls, tags = _universe()
    T = build_targets(cls, tags)
    sel = np.zeros((1, len(cls)), dtype=bool)
    sel[0, np.flatnonzero(cls == C["DET"])[:5]] = True
    sel[0, np.flatnonzero(cls == C["NOUN"])[:2]] = True
    e = target_enrichment(sel, T.masks)
    for t in range(len(T)):
        k, M = int((sel[0] & T.masks[t]).sum()), int(T.masks[t].sum())
        ref = hypergeom.sf(k - 1, len(cls), M, 7) if k else 1.0
        assert e.k[0, t] == k and np.isclose(e.p[0, t], ref)


def test_stratified_enrichment_one_stratum_is_conservative_poisson():
    cls, tags = _universe()
    T = build_targets(cls, tags, unions=False, fine=False)
    sel = np.zeros((1, len(cls)), dtype=bool)
    sel[0, np.flatnonzero(cls == C["DET"])[:4]] = True
    one = stratified_enrichment(sel, T.masks, np.zeros(len(cls), dtype=np.int64))
    exact = target_enrichment(sel, T.masks)
    assert one.p[0, C["DET"]] >= exact.p[0, C["DET"]]  # Poisson tail >= hypergeometric tail here
    # two strata: a set drawn from stratum 0 is measured against stratum 0's classes
    st = (np.arange(len(cls)) % 2).astype(np.int64)
    two = stratified_enrichment(sel, T.masks, st)
    lam = sum(sel[0, st == s].sum() * ((cls == C["DET"]) & (st == s)).sum() / (st == s).sum() for s in (0, 1))
    assert np.isclose(two.p[0, C["DET"]], 1 - __import__("scipy.stats").stats.poisson.cdf(3, lam))


def test_side_naming_prefers_covering_then_specific():
    cls, tags = _universe()
    T = build_targets(cls, tags)
    s = Settings()
    sel = np.zeros((3, len(cls)), dtype=bool)
    sel[0, np.flatnonzero(cls == C["ADP"])[:6]] = True  # six prepositions and six nouns
    sel[0, np.flatnonzero(cls == C["NOUN"])[:6]] = True
    vbd = np.flatnonzero(np.array(tags) == "VBD")
    sel[1, vbd[:12]] = True  # twelve past-tense verbs and one other verb
    sel[1, np.flatnonzero((cls == C["VERB"]) & (np.array(tags) != "VBD"))[:1]] = True
    sel[2, np.flatnonzero(cls == C["NOUN"])[:10]] = True  # ten nouns and two auxiliaries: not a union
    sel[2, np.flatnonzero(cls == C["AUX"])[:2]] = True
    side = side_tests(sel, T, s)
    assert [T.names[b] for b in side.best] == ["NOUN/ADP", "VBD", "NOUN"]
    assert np.allclose(side.p, np.minimum(1, np.where(side.ok, side.e.p, 1).min(1) * len(T)))


def test_screen_confirm_against_two_bh_steps():
    rng = np.random.default_rng(1)
    p_in, p_out = rng.uniform(size=500), rng.uniform(size=500)
    p_in[:3], p_out[:3] = 1e-9, [1e-3, 0.02, 0.3]
    ok, q = _screen_confirm(p_in, p_out, 0.05)
    q1 = bh(np.minimum(1, 2 * np.minimum(p_in, p_out)))
    S = np.flatnonzero(q1 < 0.05)
    q2 = bh(np.maximum(p_in, p_out)[S])
    ref = np.zeros(500, dtype=bool)
    ref[S[np.maximum(q1[S], q2) < 0.05]] = True
    assert np.array_equal(ok, ref) and ok[:2].all() and not ok[2]


def test_calibrate_identity_under_theoretical_null_and_deflates_inflated_ones():
    rng = np.random.default_rng(2)
    p = np.array([1e-12, 1e-6, 1e-3, 0.5])
    assert np.allclose(calibrate(p, rng.uniform(size=1000)), p, rtol=0.05)  # uniform null: (almost) unchanged
    inflated = norm.sf(rng.normal(2.0, 2.0, size=1000))  # random directions that look enriched
    c = calibrate(p, inflated)
    assert (c >= p).all() and c[0] > 1e-6 and c[1] > 1e-2
    assert np.allclose(calibrate(p, None), p)


def test_empirical_p_ranks_among_null():
    z0 = np.arange(99, dtype=float)
    assert np.allclose(empirical_p(np.array([98.5, 49.5, -1.0]), z0), [1 / 100, 50 / 100, 1.0])
