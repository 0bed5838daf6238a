"""NeuronAccumulator against brute force over every counted position (including ties, k > data)."""

import math

import numpy as np
import pytest
import torch

from circuitbook.scan.context import BatchContext
from circuitbook.scan.histogram import level
from circuitbook.scan.neurons import Q, NeuronAccumulator
from circuitbook.scan.reservoir import priority
from circuitbook.scan.mergeable_topk import EMPTY_KEY, example_key

MAX_LEN, BEFORE, AFTER = 12, 3, 2


def make_corpus(seed, n_seq=14, n=5, vocab=9):
    """Sequences (story, window, ids) and activations [len, n] with many exact ties."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for s in range(n_seq // 2):
        for w in range(2 if s % 3 == 0 else 1):
            L = int(torch.randint(2, MAX_LEN + 1, (1,), generator=g))
            ids = [vocab - 1] + torch.randint(0, vocab - 1, (L - 1,), generator=g).tolist()
            acts = torch.randint(-6, 13, (L, n), generator=g).float() / 4  # ties; zeros; negatives
            acts[:, 0] *= 37.0  # one neuron far from the others' range (level changes mid-stream)
            seqs.append((s, w, ids, acts))
    return seqs


def feed(acc, seqs, batch):
    for i in range(0, len(seqs), batch):
        grp = seqs[i:i + batch]
        T = max(len(x[2]) for x in grp)
        tok = torch.zeros(len(grp), T, dtype=torch.long)
        mask = torch.zeros(len(grp), T, dtype=torch.bool)
        acts = torch.full((len(grp), T, acc.n), 99.0)  # padding garbage must be ignored
        for j, (_, _, ids, a) in enumerate(grp):
            tok[j, :len(ids)] = torch.tensor(ids)
            mask[j, :len(ids)] = True
            acts[j, :len(ids)] = a
        ctx = BatchContext.build(tok, mask, torch.tensor([x[0] for x in grp]), torch.tensor([x[1] for x in grp]),
                                 MAX_LEN, BEFORE, AFTER)
        acc.update(acts, ctx)


def positions(seqs):
    """(key, token, seq index, position) for every counted position (BOS at 0 left out)."""
    out = []
    for si, (s, w, ids, _) in enumerate(seqs):
        for t in range(1, len(ids)):
            out.append((example_key(s, w * (MAX_LEN - 1) + t - 1), ids[t], si, t))
    return out


def window(seqs, si, t, u):
    ids, a = seqs[si][2], seqs[si][3]
    toks, vals = [], []
    for p in range(t - BEFORE, t + AFTER + 1):
        ok = 0 <= p < len(ids)
        toks.append(ids[p] if ok else -1)
        vals.append(float(a[p, u]) if ok else math.nan)
    return toks, vals


def same(a, b):
    return all((x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


@pytest.mark.parametrize("k,r", [(4, 2), (200, 3)])  # k=200: more than the data
@pytest.mark.parametrize("paths", ["numba", "torch", "sparse", "dense"])
def test_neuron_accumulator_matches_brute_force(k, r, paths, monkeypatch):
    # "numba": the fused CPU kernels; the rest is the torch path: small batches take the exact-prefix
    # path; "sparse" shrinks the prefix to one row and never goes dense for candidate counts (tail
    # bands, extremes and top-k go through the sparse candidates), "dense" sends every unit with more
    # than one candidate down the dense path
    monkeypatch.setattr(NeuronAccumulator, "kernels", "numba" if paths == "numba" else "torch")
    if paths in ("sparse", "dense"):
        monkeypatch.setattr(NeuronAccumulator, "prefix_min", 1)
        monkeypatch.setattr(NeuronAccumulator, "heavy_min", 10**9 if paths == "sparse" else 0)
        if paths == "dense":
            monkeypatch.setattr(NeuronAccumulator, "heavy_limit", lambda self, M: 1, raising=False)
    seqs = make_corpus(0)
    n = seqs[0][3].shape[1]
    acc = NeuronAccumulator(n, k, r, BEFORE + 1 + AFTER, d_vocab=9)
    feed(acc, seqs, batch=3)
    acc.top.canonicalize()
    acc.bands.canonicalize()
    pos = positions(seqs)
    X = np.array([[float(seqs[si][3][t, u]) for u in range(n)] for _, _, si, t in pos])  # [M, n]
    keys = torch.tensor([p[0] for p in pos])
    pri = priority(keys).tolist()
    assert acc.count == len(pos)
    assert acc.vmax.tolist() == X.max(0).astype(np.float32).tolist()
    assert acc.vmin.tolist() == X.min(0).astype(np.float32).tolist()
    mean, std = acc.mean_std()
    xq = np.round(X * Q) / Q
    np.testing.assert_allclose(mean.numpy(), xq.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(std.numpy(), xq.std(0), rtol=1e-9)
    assert acc.fire_count().tolist() == (X > 0).sum(0).tolist()
    for u in range(n):
        e = int(level(torch.tensor([np.abs(X[:, u]).max()]))[0])
        assert acc.hist.exp[u] == e and np.abs(X[:, u]).max() < 2.0 ** e <= 2 * max(np.abs(X[:, u]).max(), 2**-24)
        b = np.ceil(X[:, u] * 2.0 ** (6 - e)).astype(int) - 1 + 64
        assert acc.hist.counts[u].tolist() == np.bincount(b, minlength=128).tolist()
        # top k: value desc, then corpus order
        order = sorted(range(len(pos)), key=lambda j: (-X[j, u], pos[j][0]))[:k]
        assert acc.top.filled()[u] == len(order)
        for slot, j in enumerate(order):
            assert acc.top.vals[u, slot] == X[j, u] and acc.top.keys[u, slot] == pos[j][0]
            toks, vals = window(seqs, pos[j][2], pos[j][3], u)
            assert acc.top.ctx_tok[u, slot].tolist() == toks
            assert same(acc.top.ctx_val[u, slot].tolist(), vals)
        # bands: per band column, the r smallest (priority, key)
        bands = {}
        for j in range(len(pos)):
            bands.setdefault((b[j]) >> 3, []).append(j)
        for c in range(16):
            want = sorted(bands.get(c, []), key=lambda j: (pri[j], pos[j][0]))[:r]
            got = [kk for kk in acc.bands.keys[u, c].tolist() if kk != EMPTY_KEY]
            assert got == [pos[j][0] for j in want], (u, c)
            for slot, j in enumerate(want):
                assert acc.bands.vals[u, c, slot] == X[j, u]
                toks, vals = window(seqs, pos[j][2], pos[j][3], u)
                assert acc.bands.ctx_tok[u, c, slot].tolist() == toks
                assert same(acc.bands.ctx_val[u, c, slot].tolist(), vals)
    # per-token means: mean over occurrences, tokens seen >= 2 times, ties -> smaller id
    ids, means, counts = acc.token_means(3, 2)
    tokens = np.array([p[1] for p in pos])
    for u in range(n):
        rows = []
        for t in sorted(set(tokens.tolist())):
            sel = tokens == t
            if sel.sum() >= 2:
                rows.append((-xq[sel, u].mean(), t, int(sel.sum())))
        rows.sort()
        assert ids[u].tolist() == [t for _, t, _ in rows[:3]]
        assert counts[u].tolist() == [c for _, _, c in rows[:3]]
        np.testing.assert_allclose(means[u].numpy(), [-m for m, _, _ in rows[:3]], rtol=1e-12)


def state_equal(a, b):
    sa, sb = a.state(), b.state()
    for key in ("count", "s1", "s2", "vmax", "vmin"):
        assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    for part in ("hist", "top", "bands"):
        for key in sa[part]:
            x, y = sa[part][key], sb[part][key]
            assert torch.equal(x.nan_to_num(123.0), y.nan_to_num(123.0)) if x.is_floating_point() else torch.equal(x, y), (part, key)
    ta = dict(zip(a.tok_ids.tolist(), a.tok_rows.tolist()))
    tb = dict(zip(b.tok_ids.tolist(), b.tok_rows.tolist()))
    assert ta == tb


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_batching_and_merge_do_not_change_anything(kernels, monkeypatch):
    monkeypatch.setattr(NeuronAccumulator, "kernels", kernels)
    seqs = make_corpus(3, n_seq=20)
    n, W = seqs[0][3].shape[1], BEFORE + 1 + AFTER
    ref = NeuronAccumulator(n, 5, 2, W, 9)
    feed(ref, seqs, batch=len(seqs))
    for batch in (1, 4):
        acc = NeuronAccumulator(n, 5, 2, W, 9)
        feed(acc, seqs, batch)
        state_equal(acc, ref)
    # two shards by story parity, merged
    a, b = NeuronAccumulator(n, 5, 2, W, 9), NeuronAccumulator(n, 5, 2, W, 9)
    feed(a, [x for x in seqs if x[0] % 2 == 0], 3)
    feed(b, [x for x in seqs if x[0] % 2 == 1], 2)
    a.merge(b)
    state_equal(a, ref)
    # and through serialisation
    state_equal(NeuronAccumulator.from_state(ref.state()), ref)


@pytest.mark.parametrize("cold", [None, -1, 2**63 - 1])
def test_fused_kernels_equal_the_torch_path_bit_for_bit(monkeypatch, cold):
    """Many units, wide value ranges, exact ties and mid-stream level changes: both paths, same state.
    cold -1 / 2**63-1: every row takes the band test through the cold-band bits / the threshold table."""
    from circuitbook.scan import kernels

    if cold is not None:
        monkeypatch.setattr(kernels, "COLD", cold)
    g = torch.Generator().manual_seed(7)
    seqs = []
    for s in range(40):
        L = int(torch.randint(2, MAX_LEN + 1, (1,), generator=g))
        ids = [8] + torch.randint(0, 8, (L - 1,), generator=g).tolist()
        acts = torch.randn(L, 150, generator=g) * torch.logspace(-3, 2, 150)  # spans of 1e-3 .. 1e2
        acts[:, ::3] = acts[:, ::3].mul(8).round() / 8  # ties
        acts[:, 1::7] = torch.relu(acts[:, 1::7])  # many exact zeros
        acts *= 1 + (s // 10)  # levels keep rising
        seqs.append((s, 0, ids, acts))
    accs = {}
    for path in ("numba", "torch"):
        monkeypatch.setattr(NeuronAccumulator, "kernels", path)
        accs[path] = NeuronAccumulator(150, 6, 3, BEFORE + 1 + AFTER, 9)
        feed(accs[path], seqs, batch=7)
    state_equal(accs["numba"], accs["torch"])


def test_nan_activations_are_refused():
    acc = NeuronAccumulator(3, 2, 2, BEFORE + 1 + AFTER, 9)
    seqs = make_corpus(1, n_seq=4, n=3)
    seqs[1][3][1, 2] = float("nan")
    with pytest.raises(Exception, match="NaN"):
        feed(acc, seqs, batch=4)
