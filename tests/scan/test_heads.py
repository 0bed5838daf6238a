"""HeadAccumulator against per-query brute force on real attention patterns of a small model."""

import math

import numpy as np
import pytest
import torch

from circuitbook.corpus import pad
from circuitbook.scan.context import BatchContext
from circuitbook.scan.heads import HeadAccumulator
from circuitbook.scan.neurons import Q
from circuitbook.scan.run import ScanSettings, _batches, _sequences

B4, A2 = 4, 2


def batch(grp, max_len):
    """(tokens [B, T], BatchContext) of a group of (story, window, ids), right-padded."""
    tok, mask = pad([ids for _, _, ids in grp])
    ctx = BatchContext.build(tok, mask, torch.tensor([g[0] for g in grp]), torch.tensor([g[1] for g in grp]),
                             max_len, B4, A2)
    return tok, ctx


@pytest.mark.parametrize("kernels", ["numba", "numba-2pass", "torch"])
@pytest.mark.parametrize("max_len", [24, 90])  # 90: sequences long enough to be cut into row blocks
def test_head_stats_examples_and_pairs(tiny, stories, max_len, kernels, monkeypatch):
    # numba-2pass: rows with more than one pair weight are listed by the second kernel
    monkeypatch.setattr(HeadAccumulator, "kernels", kernels.split("-")[0])
    if kernels == "numba-2pass":
        monkeypatch.setattr(HeadAccumulator, "pair_cap", 1)
    s = ScanSettings(max_len=max_len, batch_size=3)
    seqs = list(_sequences(stories[:6], tiny.tokenizer, s))
    layer = 1  # local attention (window 8)
    acc = HeadAccumulator(tiny.cfg.n_heads, 5, B4 + 1 + A2, tiny.cfg.d_vocab, pair_min=0.2)
    rows = []  # (key, seq tokens, pattern [H, q, k] of that sequence)
    for grp in _batches(iter(seqs), 3):
        tok, ctx = batch(grp, max_len)
        P = tiny.run(tok, [f"blocks.{layer}.attn.hook_pattern"])[f"blocks.{layer}.attn.hook_pattern"]
        acc.update(P, ctx)
        for j, (st, w, ids) in enumerate(grp):
            L = len(ids)
            rows.append((st, w, ids, P[j, :, :L, :L].double().numpy()))
    H = tiny.cfg.n_heads
    acc.top.canonicalize()
    sums = np.zeros((H, 5))
    n = 0
    top = {h: [] for h in range(H)}
    pairs = {}
    for st, w, ids, p in rows:
        for q in range(1, len(ids)):
            n += 1
            key = (st << 24) | (w * (max_len - 1) + q - 1)
            for h in range(H):
                r = p[h, q, :q + 1]
                ent = -sum(x * math.log(x) for x in r if x > 0)
                vals = [r[0], r[q], r[q - 1], sum(r[k] * (q - k) for k in range(q + 1)), ent]
                sums[h] += [round(float(np.float32(v)) * Q) for v in vals]
                kmax = 1 + int(np.argmax(r[1:]))
                top[h].append((-np.float32(r[1:]).max(), key, q - kmax))
                for k in range(1, q + 1):
                    if np.float32(r[k]) >= np.float32(0.2):
                        pk = (ids[q], ids[k])
                        m, c = pairs.get((h, pk), (0.0, 0))
                        pairs[(h, pk)] = (m + round(float(np.float32(r[k])) * Q), c + 1)
    assert acc.count == n
    np.testing.assert_allclose(acc.means().numpy(), sums / Q / n, rtol=1e-6, atol=1e-6)
    for h in range(H):
        want = sorted(top[h])[:5]
        assert acc.top.keys[h].tolist() == [k for _, k, _ in want]
        np.testing.assert_allclose(acc.top.vals[h].numpy(), [-v for v, _, _ in want], rtol=1e-6)
        assert acc.top.extra[h].tolist() == [d for _, _, d in want]
        got = acc.top_pairs(h, 4)
        ref = sorted(((m, c, pk) for (hh, pk), (m, c) in pairs.items() if hh == h), key=lambda x: (-x[0], x[2]))[:4]
        assert [(a, b) for a, b, _, _ in got] == [pk for _, _, pk in ref]
        assert [c for *_, c in got] == [c for _, c, _ in ref]
        np.testing.assert_allclose([m for _, _, m, _ in got], [m / Q for m, _, _ in ref])
    # the window of an example is the attention row of its query (NaN after the query)
    ex_key = acc.top.keys[0, 0].item()
    st, off = ex_key >> 24, ex_key & ((1 << 24) - 1)
    w, q = off // (max_len - 1), off % (max_len - 1) + 1
    p = next(p for s_, w_, _, p in rows if (s_, w_) == (st, w))
    for j, v in enumerate(acc.top.ctx_val[0, 0].tolist()):
        k = q - B4 + j
        if 0 <= k <= q:
            assert abs(v - p[0, q, k]) < 1e-6
        else:
            assert math.isnan(v)


def test_the_second_pair_pass_runs_when_rows_overflow(tiny, stories, monkeypatch):
    """pair_cap 1 forces rows with two or more pair weights through kernels.head_pairs (the path a small
    pair_min takes); the brute-force test above checks its output."""
    from circuitbook.scan import kernels

    calls = []
    real = kernels.head_pairs
    monkeypatch.setattr(kernels, "head_pairs", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(HeadAccumulator, "kernels", "numba")
    monkeypatch.setattr(HeadAccumulator, "pair_cap", 1)
    s = ScanSettings(max_len=24, batch_size=3)
    tok, ctx = batch(list(_sequences(stories[:3], tiny.tokenizer, s))[:3], 24)
    acc = HeadAccumulator(tiny.cfg.n_heads, 5, B4 + 1 + A2, tiny.cfg.d_vocab, pair_min=0.2)
    acc.update(tiny.run(tok, ["blocks.1.attn.hook_pattern"])["blocks.1.attn.hook_pattern"], ctx)
    assert calls
