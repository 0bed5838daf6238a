"""The analysis basis: tokens through the norm match what the real forward computes."""

import torch

from circuitbook.circuits import NormScales, make_basis, measure_scales
from circuitbook.model.forward import run


def mean_pos_intervention(weights, window=256):
    """Replace every position embedding by the mean of the first `window` (what the basis assumes)."""
    if weights.W_pos is None:
        return {}
    mean = weights.W_pos[:window].mean(0)
    return {"hook_pos_embed": lambda x: mean.expand_as(x)}


def test_embed_is_what_ln1_feeds_the_first_layer(any_model):
    w = any_model.weights
    b = make_basis(any_model)
    tokens = torch.arange(w.cfg.d_vocab)[:, None]
    q = run(w, tokens, ["blocks.0.attn.hook_q"], mean_pos_intervention(w))["blocks.0.attn.hook_q"][:, 0]
    mine = torch.einsum("vd,hde->vhe", b.embed, b.w.W_Q[0]) + b.w.b_Q[0]
    torch.testing.assert_close(mine, q, atol=1e-4, rtol=1e-4)


def test_processed_once_and_float32(gpt2_2l):
    b = make_basis(gpt2_2l.weights.to(torch.float64))
    assert b.w.dtype == torch.float32 and b.w.processing[0] == "fold_ln"
    assert make_basis(b) is b
    assert make_basis(b.w).w.processing == b.w.processing  # already processed: not processed twice


def test_measure_scales_is_the_mean_hook_scale(gpt2_2l):
    w = gpt2_2l.weights
    toks = torch.randint(0, w.cfg.d_vocab, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[2, 6:] = False
    s = measure_scales(gpt2_2l, [(toks, mask)])
    cache = run(w, toks, ["blocks.1.ln2.hook_scale", "ln_final.hook_scale"])
    m = mask.clone()
    m[:, 0] = False
    assert abs(s.final - float(cache["ln_final.hook_scale"][..., 0][m].mean())) < 1e-5
    assert abs(s.ln2[1] - float(cache["blocks.1.ln2.hook_scale"][..., 0][m].mean())) < 1e-5
    assert NormScales.unit(2).ln1 == [1.0, 1.0]
