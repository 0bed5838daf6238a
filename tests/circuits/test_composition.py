"""Composition scores against TransformerLens and dense brute force; virtual-head OV circuits."""

import pytest
import torch

from circuitbook.circuits import composition_scores, make_basis, virtual_head
from circuitbook.circuits.composition import virtual_ov_factors
from circuitbook.circuits.basis import CircuitError


def dense_scores(w):
    """Composition scores with full d_model x d_model matrices (TransformerLens' formula, written out)."""
    L, H = w.cfg.n_layers, w.cfg.n_heads
    out = {m: torch.zeros(L, H, L, H, dtype=torch.float64) for m in "QKV"}
    W = {k: getattr(w, k).double() for k in ("W_Q", "W_K", "W_V", "W_O")}
    for l1 in range(L):
        for h1 in range(H):
            ov1 = W["W_V"][l1, h1] @ W["W_O"][l1, h1]
            for l2 in range(l1 + 1, L):
                for h2 in range(H):
                    qk2 = W["W_Q"][l2, h2] @ W["W_K"][l2, h2].T
                    ov2 = W["W_V"][l2, h2] @ W["W_O"][l2, h2]
                    for m, right in (("Q", qk2), ("K", qk2.T), ("V", ov2)):
                        out[m][l1, h1, l2, h2] = (ov1 @ right).norm() / (ov1.norm() * right.norm())
    return out


def test_composition_matches_dense(any_model):
    cs = composition_scores(any_model)
    want = dense_scores(make_basis(any_model).w)
    for m in "QKV":
        torch.testing.assert_close(cs[m], want[m], atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_composition_matches_transformer_lens(arch, tl_bridge, gpt2_2l_hf, gpt2_2l, llama_2l_hf, llama_2l):
    hf, model = (gpt2_2l_hf, gpt2_2l) if arch == "gpt2" else (llama_2l_hf, llama_2l)
    tl = tl_bridge(hf, arch)
    cs = composition_scores(model)
    for m in "QKV":
        theirs = tl.all_composition_scores(m).scores.detach().double()
        torch.testing.assert_close(cs[m], theirs, atol=1e-4, rtol=0)
    assert cs.strongest("V", 1)[0][4] == pytest.approx(float(cs.v.max()))


def test_virtual_head_matches_dense_path(gpt2_2l):
    b = make_basis(gpt2_2l)
    w = b.w
    A, B = virtual_ov_factors(b, 0, 1, 1, 2)
    dense = b.embed @ w.W_V[0, 1] @ w.W_O[0, 1] @ w.W_V[1, 2] @ w.W_O[1, 2] @ w.W_U
    torch.testing.assert_close(A @ B, dense, atol=1e-4, rtol=1e-4)
    vh = virtual_head(b, 0, 1, 1, 2, k=3, n_pairs=10)
    assert torch.equal(vh.tops.top.ids, dense.topk(3, dim=-1).indices)
    assert vh.tops.name == "L0H1>L1H2"
    ev = torch.linalg.eigvals(dense.double())
    assert abs(vh.eigen.copying - float(ev.real.sum() / ev.abs().sum())) < 1e-4
    with pytest.raises(CircuitError):
        virtual_ov_factors(b, 1, 0, 0, 1)


def test_one_layer_has_no_composition(neo_1l):
    cs = composition_scores(neo_1l)
    assert cs.q.shape == (1, 4, 1, 4) and not cs.q.any() and cs.strongest("Q") == []
