"""A head whose weights are all zero (pruned, or ablated by ``handcraft --save-model``) composes with nothing:
its composition scores are 0, not 0/0, and a whole circuits run on such a model stores every row."""

from __future__ import annotations

import dataclasses

import torch

from circuitbook.circuits import composition_scores
from circuitbook.circuits.composition import CompositionScores


def zero_head(model, layer: int, head: int):
    w = model.weights
    t = {k: getattr(w, k).clone() for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
    for k in t:
        t[k][layer, head] = 0
    return model.with_weights(dataclasses.replace(w, **t))


def brute_force(w, l1, h1, l2, h2, mode):
    """One score with dense d_model x d_model matrices; None for 0/0."""
    W = {k: getattr(w, k).double() for k in ("W_Q", "W_K", "W_V", "W_O")}
    ov1 = W["W_V"][l1, h1] @ W["W_O"][l1, h1]
    qk2 = W["W_Q"][l2, h2] @ W["W_K"][l2, h2].T
    right = {"Q": qk2, "K": qk2.T, "V": W["W_V"][l2, h2] @ W["W_O"][l2, h2]}[mode]
    den = ov1.norm() * right.norm()
    return None if den == 0 else float((ov1 @ right).norm() / den)


def test_zero_head_scores_are_zero_and_the_rest_unchanged(gpt2_2l):
    from circuitbook.circuits import make_basis

    z = zero_head(gpt2_2l, 0, 1)
    z = zero_head(z, 1, 2)
    cs: CompositionScores = composition_scores(z)
    w = make_basis(z).w
    for m in "QKV":
        assert torch.isfinite(cs[m]).all()
        for h1 in range(4):
            for h2 in range(4):
                want = brute_force(w, 0, h1, 1, h2, m)
                got = float(cs[m][0, h1, 1, h2])
                if h1 == 1 or (h2 == 2):
                    assert got == 0.0 and (want is None or abs(want) < 1e-6), (m, h1, h2, want)
                else:
                    assert want is not None and abs(got - want) < 1e-6 * max(1, want), (m, h1, h2, got, want)
    assert all(s[:2] != (0, 1) for s in cs.strongest("V", 16))  # a zero score is never "strongest"


def test_circuits_run_on_a_model_with_a_zero_head(gpt2_2l, tmp_path):
    from circuitbook.book import Book
    from circuitbook.book import circuits as bc
    from circuitbook.circuits import CircuitsSettings, run_circuits

    z = zero_head(gpt2_2l, 0, 3)
    book = Book.open(tmp_path / "z.db")
    s = CircuitsSettings(k=3, k_rows=2, n_pairs=5, n_virtual=2, n_trigrams=5, detector_seqs=4, detector_len=8)
    summ = run_circuits(z, book, None, s, progress=False)
    assert summ.computed > 0
    comp = bc.stored_composition(book, "V")
    assert comp is not None and bool((comp[0, 3] == 0).all()) and bool((comp[:, :, 0, :] == 0).all())
    assert any("composition" in line for line in summ.lines())
