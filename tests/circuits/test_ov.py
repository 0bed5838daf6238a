"""OV circuits against brute force from the raw (unprocessed) weights, and the planted copying head."""

import torch

from circuitbook.circuits import make_basis, ov_matrix, ov_tops
from circuitbook.circuits.ov import ov_factors
from circuitbook.circuits.basis import NormScales, normalize


def raw_ov(w, layer, head, final_scale=1.0):
    """Full OV circuit from raw weights: token through ln1 (its bias is source-independent, so left out
    like b_V), V, O, the final LayerNorm as a linear map (centre, scale, weight), W_U, then centred over the
    vocabulary (log-probs ignore a constant)."""
    cfg = w.cfg
    pos = w.W_pos[:256].mean(0) if w.W_pos is not None else 0.0
    x = normalize(w.W_E + pos, cfg.norm, cfg.eps) * w.ln1_w[layer]
    out = x @ w.W_V[layer, head] @ w.W_O[layer, head]
    if cfg.norm == "LN":
        out = out - out.mean(-1, keepdim=True)
    logits = (out * w.lnf_w / final_scale) @ w.W_U
    return logits - logits.mean(-1, keepdim=True)


def test_ov_factors_on_token_subsets_are_the_brute_force_submatrix(any_model):
    w = any_model.weights
    src, out = torch.tensor([5, 1, 9]), torch.tensor([0, 7, 3, 11])
    A, B = ov_factors(any_model, 0, 2, src, out)
    M = raw_ov(w, 0, 2)
    centred = M - M[:, out].mean(-1, keepdim=True)  # raw_ov centres over the whole vocabulary
    got = A @ B
    torch.testing.assert_close(got - got.mean(-1, keepdim=True), centred[src][:, out], atol=1e-4, rtol=1e-4)


def test_ov_matrix_and_tops_match_brute_force(any_model):
    w = any_model.weights
    for l, h in ((0, 1), (w.cfg.n_layers - 1, 3)):
        M = raw_ov(w, l, h)
        torch.testing.assert_close(ov_matrix(any_model, l, h), M, atol=1e-4, rtol=1e-4)
        t = ov_tops(any_model, l, h, k=3, n_pairs=15)
        v, i = M.topk(3, dim=-1)
        assert torch.equal(t.top.ids, i)
        pv, pi = M.flatten().topk(15)
        assert torch.equal(t.top_pairs.rows * M.shape[1] + t.top_pairs.cols, pi)
        bv, bi = M.flatten().topk(15, largest=False)
        assert torch.equal(t.bottom_pairs.rows * M.shape[1] + t.bottom_pairs.cols, bi)
        torch.testing.assert_close(t.bottom_pairs.vals, bv, atol=1e-4, rtol=1e-4)
        assert t.name == f"L{l}H{h}"


def test_final_scale_divides_the_values(gpt2_2l):
    b = make_basis(gpt2_2l, NormScales([1.0, 1.0], [1.0, 1.0], 2.5))
    torch.testing.assert_close(ov_matrix(b, 1, 0), raw_ov(gpt2_2l.weights, 1, 0, 2.5), atol=1e-4, rtol=1e-4)


def test_planted_copying_head_copies_every_token(planted):
    model, truth = planted
    V = model.cfg.d_vocab
    t = ov_tops(model, 0, truth["copy_head"], k=2, n_pairs=V)
    assert torch.equal(t.top.ids[:, 0], torch.arange(V))  # every source's top output is itself
    assert torch.equal(t.top_pairs.rows, t.top_pairs.cols)  # the V strongest pairs are the diagonal


def test_demo_copy_head_copies_names(demo):
    names = torch.tensor(demo.truth["classes"]["NAME"])
    t = ov_tops(demo.model, 0, demo.truth["copy_head"], k=1, n_pairs=len(names))
    assert torch.equal(t.top.ids[names, 0], names)
    assert set(t.top_pairs.rows.tolist()) == set(names.tolist()) and torch.equal(t.top_pairs.rows, t.top_pairs.cols)
