import torch

from circuitbook.scan.reservoir import N_BANDS, BandReservoir, band_range, priority
from circuitbook.scan.mergeable_topk import EMPTY_KEY


def test_priority_is_a_deterministic_spread_hash():
    k = torch.arange(10_000)
    p = priority(k)
    assert torch.equal(p, priority(k.clone())) and (p >= 0).all() and (p < EMPTY_KEY).all()
    assert len(torch.unique(p)) == len(k)
    # roughly uniform: each quarter of the range gets about a quarter
    q = torch.bucketize(p, torch.tensor([2**61, 2**62, 3 * 2**61]))
    assert torch.bincount(q, minlength=4).min() > 2300


def brute(entries, r):
    """entries: (group, pri, key) -> per group the r smallest (pri, key) keys."""
    out = {}
    for g, p, k in sorted(entries, key=lambda e: (e[0], e[1], e[2])):
        out.setdefault(g, [])
        if len(out[g]) < r:
            out[g].append(k)
    return out


def test_offer_and_raise_level_keep_the_bottom_r():
    g = torch.Generator().manual_seed(0)
    U, r, W = 3, 3, 2
    res = BandReservoir(U, r, W)
    seen = []
    for step in range(6):
        c = 40
        group = torch.randint(0, U * N_BANDS, (c,), generator=g)
        keys = torch.arange(step * c, (step + 1) * c)
        pri = torch.randint(0, 50, (c,), generator=g)  # small range: priority ties, broken by key
        thr = res.threshold()[group]
        ok = pri <= thr
        res.offer(group[ok], pri[ok], keys[ok], keys[ok].float(),
                  lambda j, k=keys[ok]: (k[j, None].repeat(1, W).int(), k[j, None].repeat(1, W).float()))
        seen += list(zip(group.tolist(), pri.tolist(), keys.tolist()))
    want = brute(seen, r)
    res.canonicalize()
    for grp in range(U * N_BANDS):
        got = [k for k in res.keys.view(-1, r)[grp].tolist() if k != EMPTY_KEY]
        assert got == want.get(grp, [])
        assert res.ctx_tok.view(-1, r, W)[grp, :len(got), 0].tolist() == got  # windows travel along
    # unit 1's level rises by 2: band b -> b >> 2 (signed), bands merge
    shift = torch.tensor([0, 2, 0])
    res.raise_level(shift)
    moved = [((g_ // N_BANDS) * N_BANDS + (((g_ % N_BANDS) - N_BANDS // 2) >> 2) + N_BANDS // 2
              if g_ // N_BANDS == 1 else g_, p, k) for g_, p, k in seen]
    want = brute(moved, r)
    for grp in range(U * N_BANDS):
        got = [k for k in res.keys.view(-1, r)[grp].tolist() if k != EMPTY_KEY]
        assert got == want.get(grp, []), grp


def test_band_range():
    assert band_range(N_BANDS // 2, 0) == (0.0, 1 / 8)
    assert band_range(N_BANDS - 1, 3) == (7.0, 8.0)
    assert band_range(0, 0) == (-1.0, -7 / 8)
