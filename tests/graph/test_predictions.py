"""Per-position predictions against transformers' logits."""

from __future__ import annotations

import pytest
import torch

from circuitbook.graph import predict

TOKS = [5, 17, 3, 44, 9, 17, 28, 3]


def test_predictions_match_transformers(gpt2, gpt2_hf):
    with torch.no_grad():
        probs = gpt2_hf(torch.tensor([TOKS])).logits[0].float().softmax(-1)
    preds = predict(gpt2, TOKS, k=4)
    assert [p.pos for p in preds] == list(range(len(TOKS)))
    for p in preds:
        want = probs[p.pos].topk(4)
        assert [t for t, *_ in p.top] == want.indices.tolist()
        assert [pr for _, _, pr, _ in p.top] == pytest.approx(want.values.tolist(), abs=1e-5)
        ent = float(-(probs[p.pos] * probs[p.pos].log()).sum())
        assert p.entropy == pytest.approx(ent, abs=1e-4)
        if p.pos + 1 < len(TOKS):
            nxt = TOKS[p.pos + 1]
            assert p.next_token == nxt
            assert p.next_prob == pytest.approx(float(probs[p.pos, nxt]), abs=1e-5)
            assert p.next_rank == int((probs[p.pos] > probs[p.pos, nxt]).sum())
        else:
            assert p.next_token is None and p.next_prob is None


def test_predictions_text(ts1l):
    preds = predict(ts1l, "The cat sat on the", k=3)
    assert preds[0].token_str == "<|endoftext|>" and preds[1].next_str == " cat"
    assert preds[4].top[0][1] == " the"  # "on" -> " the"
