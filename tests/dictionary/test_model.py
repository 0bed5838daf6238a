"""The sparse TopK path (custom backward, embedding_bag decode) against plain dense autograd."""

from __future__ import annotations

import pytest
import torch

from circuitbook.dictionary import Dictionary, DictionaryConfig, DictionaryError


def _dict(kind="transcoder", k=3, seed=0):
    d = Dictionary(DictionaryConfig(kind, 0, 12, 30, "topk", k=k))
    d.init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        d.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 1))
        if d.W_skip is not None:
            d.W_skip.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 2))
    return d


@pytest.mark.parametrize("kind", ["transcoder", "skip-transcoder"])
def test_sparse_path_matches_dense_autograd(kind):
    d = _dict(kind)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(40, 12, generator=g), torch.randn(40, 12, generator=g)
    dead = torch.zeros(30, dtype=torch.bool)
    dead[::3] = True
    vals, idx, (av, ai) = d.topk_codes(x, dead=dead, aux_k=4)
    loss = (d.decode_sparse(vals, idx, x) - y).pow(2).sum() + d.decode_sparse(av, ai, bias=False).pow(2).sum()
    loss.backward()
    sparse = {n: p.grad.clone() for n, p in d.named_parameters()}
    d.zero_grad()
    pre = d.pre(x)
    f = d.activate(pre)
    aux_idx = pre.detach().masked_fill(~dead, -float("inf")).topk(4, dim=-1).indices
    fa = torch.zeros_like(pre).scatter(-1, aux_idx, pre.gather(-1, aux_idx).relu())
    loss2 = (d.decode(f, x) - y).pow(2).sum() + (fa @ d.W_dec).pow(2).sum()
    loss2.backward()
    assert torch.allclose(loss, loss2, atol=1e-4)
    for n, p in d.named_parameters():
        assert torch.allclose(sparse[n], p.grad, atol=1e-4), n


def test_fold_scales_keeps_the_function_and_unit_rows():
    d = _dict("skip-transcoder")
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    s_in, s_out = 0.3, 2.5
    want = d(x * s_in) / s_out
    d.fold_scales(s_in, s_out)
    assert torch.allclose(d(x), want, atol=1e-5)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(30), atol=1e-5)


def test_bad_shapes_and_settings():
    d = _dict()
    with pytest.raises(DictionaryError, match="width 7"):
        d.encode(torch.zeros(3, 7))
    with pytest.raises(DictionaryError, match="W_dec has shape"):
        Dictionary.from_tensors(d.cfg, {**d.tensors(), "W_dec": torch.zeros(30, 5)})
    with pytest.raises(DictionaryError, match="NaN"):
        Dictionary.from_tensors(d.cfg, {**d.tensors(), "b_dec": torch.full((12,), float("nan"))})
    with pytest.raises(DictionaryError, match="1 <= k"):
        DictionaryConfig("sae", 0, 12, 30, "topk", k=31)
    with pytest.raises(DictionaryError, match="kind must be"):
        DictionaryConfig("crosscoder", 0, 12, 30, "relu")


def test_init_ties_an_sae_and_not_a_transcoder():
    """An SAE starts with W_enc = W_dec^T; a transcoder (reads the MLP's input, writes its output) does not: its
    encoder columns are independent of its decoder rows (|cos| of random 64-d unit vectors, about 0.1)."""
    for kind, tied in (("sae", True), ("transcoder", False), ("skip-transcoder", False)):
        d = Dictionary(DictionaryConfig(kind, 0, 64, 200, "topk", k=4))
        d.init_weights(torch.Generator().manual_seed(0))
        cos = torch.nn.functional.cosine_similarity(d.W_enc.T, d.W_dec, dim=1).abs()
        assert (cos.min() > 0.999) if tied else (cos.median() < 0.2), kind
