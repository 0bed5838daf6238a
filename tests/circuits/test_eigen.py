"""Eigenvalues via the factored form against TransformerLens and against the dense full circuits."""

import pytest
import torch

from circuitbook.circuits import make_basis, ov_copying, ov_eigenvalues, ov_matrix, qk_eigenvalues
from circuitbook.circuits.eigen import summarize


def assert_same_spectrum(mine, theirs, atol=1e-4):
    """Every eigenvalue of `mine` has a distinct partner in `theirs` within atol (greedy nearest matching)."""
    theirs = list(theirs.to(torch.complex128))
    assert len(mine) == len(theirs)
    for lam in mine.to(torch.complex128):
        j = min(range(len(theirs)), key=lambda i: abs(theirs[i] - lam))
        assert abs(theirs[j] - lam) < atol * max(1.0, abs(lam)), (lam, theirs[j])
        theirs.pop(j)


@pytest.fixture(scope="module")
def tl_gpt2(tl_bridge, gpt2_2l_hf):
    return tl_bridge(gpt2_2l_hf, "gpt2")


def test_ov_and_qk_eigenvalues_match_transformer_lens(tl_gpt2, gpt2_2l):
    tl = tl_gpt2
    b = make_basis(gpt2_2l)
    W_E, W_U = b.w.W_E, b.w.W_U
    torch.testing.assert_close(tl.W_E.detach(), W_E, atol=1e-4, rtol=1e-4)  # same processed basis
    ov, qk = tl.OV.eigenvalues, tl.QK.eigenvalues  # [L, H, d_head]
    full_ov = (tl.W_E @ tl.OV @ tl.W_U).eigenvalues
    full_qk = (tl.W_E @ tl.QK @ tl.W_E.T).eigenvalues
    for l in range(2):
        for h in range(4):
            assert_same_spectrum(ov_eigenvalues(b, l, h, full=False), ov[l, h].detach())
            assert_same_spectrum(qk_eigenvalues(b, l, h, full=False), qk[l, h].detach())
            assert_same_spectrum(ov_eigenvalues(b, l, h, embed=W_E), full_ov[l, h].detach())
            assert_same_spectrum(qk_eigenvalues(b, l, h, embed=W_E), full_qk[l, h].detach())


def test_factored_eigenvalues_are_the_dense_circuits_nonzero_ones(any_model):
    l, h = 0, 1
    dense = torch.linalg.eigvals(ov_matrix(any_model, l, h).double())
    dense = dense[dense.abs().argsort(descending=True)][: any_model.cfg.d_head]
    assert_same_spectrum(ov_eigenvalues(any_model, l, h), dense, atol=1e-3)


def test_copying_score_definition():
    s = summarize(torch.tensor([3.0 + 0j, -1.0 + 0j, 1j, -1j], dtype=torch.complex128))
    # sum Re = 2, sum abs = 6; only 3 has a positive real part
    assert abs(s.copying - 2.0 / 6.0) < 1e-12 and abs(s.positive_share - 3.0 / 6.0) < 1e-12


def test_planted_copying_head_has_copying_score_one(planted):
    model, truth = planted
    assert abs(ov_copying(model, 0, truth["copy_head"]).copying - 1.0) < 1e-4
    # the skip-trigram head maps b -> c, not b -> b: with the unembedding centred it even lowers b a little
    assert ov_copying(model, 0, truth["trigram_head"]).copying < 0


def test_demo_copy_head_is_the_most_copying(demo):
    scores = [ov_copying(demo.model, 0, h).copying for h in range(demo.model.cfg.n_heads)]
    assert max(range(len(scores)), key=scores.__getitem__) == demo.truth["copy_head"]
    assert scores[demo.truth["copy_head"]] > 0.99
