"""Direct path: bigram table and direct-path-only loss against the real forward with attention and MLPs removed."""

import math

import torch

from circuitbook.circuits import bigram_table, direct_path_loss, make_basis
from circuitbook.model.forward import run


def direct_only(cfg):
    zero = lambda x: torch.zeros_like(x)  # noqa: E731
    return {f"blocks.{l}.{n}": zero for l in range(cfg.n_layers) for n in ("hook_attn_out", "hook_mlp_out")}


def test_bigram_table_matches_forward_without_attention_and_mlp(any_model):
    w = any_model.weights
    iv = direct_only(w.cfg)
    if w.W_pos is not None:
        mean = w.W_pos[:256].mean(0)
        iv["hook_pos_embed"] = lambda x: mean.expand_as(x)
    V = w.cfg.d_vocab
    logp = run(w, torch.arange(V)[:, None], ["logits"], iv)["logits"][:, 0].log_softmax(-1)
    t = bigram_table(any_model, k=4, n_pairs=20)
    v, i = logp.topk(4, dim=-1)
    assert torch.equal(t.top.ids, i)
    torch.testing.assert_close(t.top.vals, v, atol=1e-4, rtol=1e-4)
    pv, pi = logp.flatten().topk(20)
    assert torch.equal(t.pairs.rows * V + t.pairs.cols, pi)
    torch.testing.assert_close(t.pairs.vals, pv, atol=1e-4, rtol=1e-4)


def test_direct_path_loss_matches_forward_without_attention_and_mlp(any_model):
    w = any_model.weights
    g = torch.Generator().manual_seed(3)
    toks = torch.randint(0, w.cfg.d_vocab, (4, 12), generator=g)
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[1, 7:] = False
    mask[3, 2:] = False
    lp_direct = run(w, toks, ["logits"], direct_only(w.cfg))["logits"].log_softmax(-1)
    lp_full = run(w, toks, ["logits"])["logits"].log_softmax(-1)
    m = mask[:, 1:] & mask[:, :-1]
    nll = lambda lp: -lp[:, :-1].gather(-1, toks[:, 1:, None])[..., 0][m].mean()  # noqa: E731
    d = direct_path_loss(any_model, [(toks, mask)])
    assert d.n_tokens == int(m.sum())
    assert abs(d.direct - float(nll(lp_direct))) < 1e-4
    assert abs(d.full - float(nll(lp_full))) < 1e-4
    assert d.uniform == math.log(w.cfg.d_vocab)
    gain = d.uniform - d.full
    assert math.isnan(d.explained) if gain <= 0 else abs(d.explained - (d.uniform - d.direct) / gain) < 1e-9


def test_planted_bigram_table_recovered_exactly(planted):
    model, truth = planted
    t = bigram_table(model, k=3, n_pairs=5)
    want = truth["bigram"].log_softmax(-1)
    v, i = want.topk(3, dim=-1)
    assert torch.equal(t.top.ids, i)
    torch.testing.assert_close(t.top.vals, v, atol=1e-4, rtol=1e-4)


def test_direct_path_loss_on_the_planted_model_is_the_bigram_loss(planted):
    model, truth = planted
    toks = torch.randint(0, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    lp = truth["bigram"].log_softmax(-1)
    want = -lp[toks[:, :-1], toks[:, 1:]].mean()
    d = direct_path_loss(make_basis(model), [(toks, torch.ones_like(toks, dtype=torch.bool))], full=False)
    assert abs(d.direct - float(want)) < 1e-4 and math.isnan(d.full)
