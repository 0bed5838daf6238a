"""Detector scores against attention patterns from transformers (an independent forward), by explicit loops."""

import pytest
import torch

from circuitbook.circuits import CircuitError, detector_scores, repeated_random_tokens


def test_repeated_random_tokens_layout():
    t = repeated_random_tokens(50, 3, 7, seed=1, bos_id=0, exclude=(1,))
    assert t.shape == (3, 15) and (t[:, 0] == 0).all()
    assert torch.equal(t[:, 1:8], t[:, 8:])
    assert all(len(set(r[1:8].tolist())) == 7 for r in t)  # distinct within a sequence
    assert not ((t[:, 1:] == 0) | (t[:, 1:] == 1)).any()
    with pytest.raises(CircuitError, match="too small"):
        repeated_random_tokens(5, 1, 7)


@pytest.mark.parametrize("bos", [0, None])
def test_detectors_match_transformers_attentions(gpt2_2l_hf, gpt2_2l, bos):
    n, n_seqs = 10, 6
    d = detector_scores(gpt2_2l.weights, n_seqs=n_seqs, seq_len=n, seed=2, batch_size=4, bos_id=bos)
    toks = repeated_random_tokens(61, n_seqs, n, seed=2, bos_id=bos)
    gpt2_2l_hf.config._attn_implementation = "eager"
    with torch.no_grad():
        att = gpt2_2l_hf(toks, output_attentions=True).attentions  # per layer [b, h, q, k]
    off = 1 if bos is not None else 0
    for l in range(2):
        for h in range(4):
            a = att[l][:, h].double()
            prev = [a[:, i, i - 1] for i in range(off + 1, off + 2 * n)]
            dup = [a[:, i, i - n] for i in range(off + n, off + 2 * n)]
            ind = [a[:, i, i - n + 1] for i in range(off + n, off + 2 * n)]
            for name, xs in (("previous_token", prev), ("duplicate_token", dup), ("induction", ind)):
                want = float(torch.stack(xs).mean())
                assert abs(float(d[name][l, h]) - want) < 1e-5, (name, l, h)
    best = d.best("previous_token", 2)
    assert best[0][2] >= best[1][2] and d.seq_len == n


def test_sequences_longer_than_the_context_are_refused(gpt2_2l):
    with pytest.raises(CircuitError, match="positions"):
        detector_scores(gpt2_2l.weights, n_seqs=1, seq_len=20, bos_id=0)
