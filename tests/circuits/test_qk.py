"""QK circuits against the real forward's attention scores and brute force; positional profile."""

import pytest
import torch

from circuitbook.circuits import CircuitError, make_basis, positional_qk, qk_matrix, qk_tops
from circuitbook.circuits.basis import normalize
from circuitbook.model.forward import run


def raw_side(w, x, layer, W, b):
    cfg = w.cfg
    return (normalize(x, cfg.norm, cfg.eps) * w.ln1_w[layer] + w.ln1_b[layer]) @ W + b


def raw_qk(w, layer, head):
    """Token QK from raw weights (ln1 with bias, b_Q, b_K), divided by attn_scale, centred over keys."""
    pos = w.W_pos[:256].mean(0) if w.W_pos is not None else 0.0
    q = raw_side(w, w.W_E + pos, layer, w.W_Q[layer, head], w.b_Q[layer, head])
    k = raw_side(w, w.W_E + pos, layer, w.W_K[layer, head], w.b_K[layer, head])
    S = q @ k.T / w.cfg.attn_scale
    return S - S.mean(-1, keepdim=True)


def test_qk_matches_forward_attention_scores(gpt2_2l, neo_1l):
    for model in (gpt2_2l, neo_1l):  # attn_scale sqrt(d_head) and 1 (GPT-Neo)
        w = model.weights
        V = w.cfg.d_vocab
        mean = w.W_pos[:256].mean(0)
        keys, queries = torch.meshgrid(torch.arange(V), torch.arange(V), indexing="xy")
        toks = torch.stack([keys.flatten(), queries.flatten()], 1)  # sequence "key query": every pair
        s = run(w, toks, ["blocks.0.attn.hook_attn_scores"], {"hook_pos_embed": lambda x: mean.expand_as(x)})
        S = s["blocks.0.attn.hook_attn_scores"][:, 2, 1, 0].reshape(V, V)  # [query, key] for head 2
        S = S - S.mean(-1, keepdim=True)
        torch.testing.assert_close(qk_matrix(model, 0, 2), S, atol=1e-4, rtol=1e-4)


def test_qk_tops_match_brute_force(any_model):
    w = any_model.weights
    l, h = w.cfg.n_layers - 1, 1
    M = raw_qk(w, l, h)
    torch.testing.assert_close(qk_matrix(any_model, l, h), M, atol=1e-4, rtol=1e-4)
    t = qk_tops(any_model, l, h, k=4, n_pairs=12)
    assert torch.equal(t.top.ids, M.topk(4, dim=-1).indices)
    pv, pi = M.flatten().topk(12)
    assert torch.equal(t.top_pairs.rows * M.shape[1] + t.top_pairs.cols, pi)
    torch.testing.assert_close(t.top_pairs.vals, pv, atol=1e-4, rtol=1e-4)


def test_planted_qk_pair_is_the_top_pair(planted):
    model, truth = planted
    key, query, _ = truth["trigram"]
    t = qk_tops(model, 0, truth["trigram_head"], k=1, n_pairs=3)
    assert (int(t.top_pairs.rows[0]), int(t.top_pairs.cols[0])) == (query, key)
    assert int(t.top.ids[query, 0]) == key


def test_positional_profile_matches_brute_force(gpt2_2l):
    w = gpt2_2l.weights
    l, h = 1, 2
    n = w.W_pos.shape[0]
    x = w.W_pos + w.W_E.mean(0)
    P = raw_side(w, x, l, w.W_Q[l, h], w.b_Q[l, h]) @ raw_side(w, x, l, w.W_K[l, h], w.b_K[l, h]).T / w.cfg.attn_scale
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    P = P.masked_fill(~causal, float("nan"))
    P = P - P.nanmean(-1, keepdim=True)
    p = positional_qk(gpt2_2l, l, h, max_offset=5)
    torch.testing.assert_close(p.scores, P, atol=1e-4, rtol=1e-4, equal_nan=True)
    for d in range(6):
        assert abs(float(p.profile[d]) - float(torch.diagonal(P, -d).mean())) < 1e-4
    assert abs(p.var_pos - float(torch.nanmean(P.pow(2).nanmean(-1)))) < 1e-4
    assert abs(p.var_tok - float(qk_matrix(gpt2_2l, l, h).pow(2).mean())) < 1e-3 * p.var_tok
    assert 0 <= p.positional_share <= 1 and p.preferred_offset == int(p.profile.argmax())


def test_positional_profile_not_applicable_to_rotary(llama_2l):
    with pytest.raises(CircuitError, match="rotary"):
        positional_qk(make_basis(llama_2l), 0, 0)
