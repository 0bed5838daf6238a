"""Fused CPU kernels for the scan's per-batch bookkeeping (numba), one pass over each activation.

The torch code in neurons.py / heads.py is the reference and the path for other devices: on a CPU it
takes a dozen passes over a batch's [positions, units] values (gather, histogram bins, bincount, exact
sums, candidate masks, sorts), each a separate kernel launch. Here one compiled loop visits every value
once and does all of it, so the scan's bookkeeping costs a fraction of the forward.

Neurons (``neuron_update``): parallel over blocks of units, each thread owns its units' state (no
atomics, no races) and walks the batch's counted rows twice while the block's columns stay in cache
(extremes first, then everything else). Results are exactly those of the torch path: histogram counts and the sums on the 2**-12 grid are integers, and the
top-k / band reservoirs keep the best entries under the same total orders (value desc then key asc;
(priority, key) asc). An entering example's context window is cut on the spot, while the rows around it
are in cache (the torch path gathers windows afterwards, one cache line per value).

Heads (``head_stats``, ``head_pairs``): parallel over (sequence, head); each query row is read once for
the five statistics, the strongest attention and the pair weights (up to a cap per row; rows beyond it,
only with a small pair_min, are listed by a second pass, ``head_pairs``). Statistics are summed in float64 in key order, so they are deterministic (the torch path
uses a float32 matmul: the two agree to float32 precision, not bit for bit).

Compiled on first use and cached on disk (numba ``cache=True``).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import njit, prange

BLOCK = 64  # units per task: its batch histogram (32 KiB), sums and thresholds stay in L1/L2 (64 measured best of 32-256)
LOCK = threading.Lock()  # numba's default thread pool must not be entered from two threads at once
EMPTY = (1 << 63) - 1  # topk.EMPTY_KEY: an empty slot's key and priority
COLD = 1 << 57  # rows with a band priority above this (63 in 64) take the band test without a gather


def threads(n: int) -> None:
    """Use n threads for the kernels (the scan follows torch.get_num_threads())."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@njit(inline="always")
def _worst_top(vals, keys, u):  # pragma: no cover - compiled
    """Slot of unit u holding the worst (value asc, then key desc) entry."""
    w = 0
    for j in range(1, vals.shape[1]):
        if vals[u, j] < vals[u, w] or (vals[u, j] == vals[u, w] and keys[u, j] > keys[u, w]):
            w = j
    return w


@njit(inline="always")
def _worst_band(pri, keys, u, b):  # pragma: no cover - compiled
    """Slot of band (u, b) holding the worst (largest (priority, key)) entry."""
    w = 0
    for j in range(1, pri.shape[2]):
        if pri[u, b, j] > pri[u, b, w] or (pri[u, b, j] == pri[u, b, w] and keys[u, b, j] > keys[u, b, w]):
            w = j
    return w


@njit
def _raise_unit(hist, band_pri, band_keys, band_vals, band_tok, band_val, u, d):  # pragma: no cover - compiled
    """Unit u's level rises by d > 0: histogram bin b -> b >> d, band b -> b >> d (signed), each band
    keeping its r best (priority, key) with their windows (see PowerHistogram / BandReservoir.raise_level)."""
    d = min(d, 62)  # (bins and bands are below 2**7 in size: larger shifts change nothing, and >= 64 is undefined)
    nbin = hist.shape[1]
    hh = hist[u].copy()
    hist[u, :] = 0
    for c in range(nbin):
        hist[u, ((c - nbin // 2) >> d) + nbin // 2] += hh[c]
    nb, r, W = band_pri.shape[1], band_pri.shape[2], band_tok.shape[3]
    ep, ek = band_pri[u].copy().reshape(-1), band_keys[u].copy().reshape(-1)
    ev = band_vals[u].copy().reshape(-1)
    et, ew = band_tok[u].copy().reshape(nb * r, W), band_val[u].copy().reshape(nb * r, W)
    band_pri[u, :, :] = EMPTY
    band_keys[u, :, :] = EMPTY
    band_vals[u, :, :] = np.nan
    band_tok[u, :, :, :] = -1
    band_val[u, :, :, :] = np.nan
    for e in range(nb * r):
        if ek[e] == EMPTY:
            continue
        c = ((e // r - nb // 2) >> d) + nb // 2
        j = _worst_band(band_pri, band_keys, u, c)
        if ep[e] < band_pri[u, c, j] or (ep[e] == band_pri[u, c, j] and ek[e] < band_keys[u, c, j]):
            band_pri[u, c, j] = ep[e]
            band_keys[u, c, j] = ek[e]
            band_vals[u, c, j] = ev[e]
            band_tok[u, c, j, :] = et[e]
            band_val[u, c, j, :] = ew[e]


@njit(inline="always")
def _window(x, tokens, lengths, T, before, r, u, out_tok, out_val):  # pragma: no cover - compiled
    """Window of unit u around flat row r = b * T + t into out_tok [W] / out_val [W]."""
    b = r // T
    t = r - b * T
    for j in range(out_tok.shape[0]):
        pos = t - before + j
        if 0 <= pos < lengths[b]:
            out_tok[j] = tokens[b * T + pos]
            out_val[j] = x[b * T + pos, u]
        else:
            out_tok[j] = -1
            out_val[j] = np.nan


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def neuron_update(x, rows, tok_row, keys, pri, scale, q, hist, s1, s2, tok_sums,
                  top_vals, top_keys, top_tok, top_val, band_pri, band_keys, band_vals, band_tok, band_val,
                  band_shift, cold_pri, tokens, lengths, T, before, vmax, vmin, exp, status):  # pragma: no cover - compiled
    """One batch into one layer's neuron state: each block of units reads its columns of the batch twice
    (extremes, then everything else) while they are in cache.

    x [R, n] float32 activations (R = B * T); rows [M] int64 counted rows of x in corpus order; tok_row
    [M] int64 row of tok_sums for each; keys / pri [M] int64 example keys and band priorities; scale [n]
    float32 2**(bits - level) (so ceil(x * scale), exact in float32, is the signed histogram bin); q: the
    sums' grid (4096.0). State, updated in place: hist [n, 2*HALF] int64; s1, s2 [n] float64; tok_sums
    [v, n] float64; top_vals [n, k] float32, top_keys [n, k] int64; band_pri / band_keys [n, n_bands, r]
    int64, band_vals [n, n_bands, r] float32; and the context windows of entering examples, cut right
    away while their rows are still in cache: top_tok / top_val [n, k, W], band_tok / band_val
    [n, n_bands, r, W] (int32 token ids, -1 outside the sequence; float32 values, NaN outside), from
    tokens [R] int64 and lengths [B] int64; window j of row b * T + t covers position t - before + j.

    Each block of units first takes the batch's extremes into vmax / vmin [n] float32 (state, in place)
    and raises the level exp [n] int64 of every unit they outgrow (_raise_unit: histogram.PowerHistogram
    and reservoir.BandReservoir.raise_level, exactly), then counts the batch, its columns still in cache.
    A block holding a NaN stops before counting anything, with status[block] = 1 [n_blocks] int64.

    fastmath only licenses reordering and fusing the float64 sums, whose terms are integers (exact in any
    order); NaN blocks stop before anything is counted and -inf marks empty top-k slots: no nnan/ninf."""
    n = x.shape[1]
    nbin = hist.shape[1]
    half = nbin // 2
    nblk = (n + BLOCK - 1) // BLOCK
    nb = band_pri.shape[1]
    bits = 0
    while (1 << bits) < half:
        bits += 1
    for bi in prange(nblk):
        u0 = bi * BLOCK
        u1 = min(n, u0 + BLOCK)
        w = u1 - u0
        sc = scale[u0:u1].copy()
        mx = vmax[u0:u1].copy()
        mn = vmin[u0:u1].copy()
        bad = 0
        for m in range(rows.shape[0]):
            xr = x[rows[m], u0:u1]
            for i in range(w):
                mx[i] = max(mx[i], xr[i])
                mn[i] = min(mn[i], xr[i])
                bad += np.isnan(xr[i])
        vmax[u0:u1] = mx
        vmin[u0:u1] = mn
        status[bi] = 0
        if bad:
            status[bi] = 1
            continue
        for i in range(w):  # a level that no longer covers the batch rises first (histogram, bands)
            a = max(mx[i], -mn[i])
            if a * sc[i] >= half:
                e = math.frexp(np.float64(a))[1]  # smallest e with 2**e > a (a >= 2**exp > 0)
                _raise_unit(hist, band_pri, band_keys, band_vals, band_tok, band_val, u0 + i, e - exp[u0 + i])
                exp[u0 + i] = e
                sc[i] = np.float32(math.ldexp(1.0, bits - e))
        # this batch's counts, bin-major: most values sit in a few central bins, so neighbouring
        # units count into neighbouring cells; flushed into hist at the end
        h = np.zeros(nbin * w, np.int32)
        a1 = np.zeros(w)
        a2 = np.zeros(w)
        # the worst entry of each unit's top-k and of each band: a value must beat it to enter, so
        # v >= kth[i] and p <= bthr[i, band] are necessary. Most rows have p > cold_pri (COLD): for
        # them only bands whose threshold is above it can take anything (bit b of cold[i]: few values reach
        # those bands), a test with no gather
        wt = np.empty(w, np.int64)
        kth = np.empty(w, np.float32)
        wb = np.empty((w, nb), np.int64)
        bthr = np.empty((w, nb), np.int64)
        cold = np.zeros(w, np.int32)
        # a unit whose top-k is still filling (the first batch) sees most of its entries evicted again
        # within the batch: its windows are cut once, for the survivors, after the rows (src: row index)
        filling = np.zeros(w, np.bool_)
        src_top = np.full((w, top_vals.shape[1]), -1, np.int64)
        src_band = np.full((w, nb, band_pri.shape[2]), -1, np.int64)
        for i in range(w):
            u = u0 + i
            wt[i] = _worst_top(top_vals, top_keys, u)
            kth[i] = top_vals[u, wt[i]]
            filling[i] = kth[i] == -np.inf
            for b in range(nb):
                wb[i, b] = _worst_band(band_pri, band_keys, u, b)
                bthr[i, b] = band_pri[u, b, wb[i, b]]
                if bthr[i, b] >= cold_pri:
                    cold[i] |= np.int32(1) << b
        col = np.empty(w, np.int32)
        flag = np.empty(w, np.bool_)
        for m in range(rows.shape[0]):
            xr = x[rows[m], u0:u1]
            tr = tok_sums[tok_row[m], u0:u1]
            for i in range(w):  # vectorised: exact sums of the values on the grid
                xq = np.rint(np.float64(xr[i]) * q)
                a1[i] += xq
                a2[i] += xq * xq
                tr[i] += xq
            for i in range(w):  # histogram column 0 .. 2*HALF-1
                col[i] = np.int32(np.ceil(xr[i] * sc[i])) + (half - 1)
            for i in range(w):
                h[col[i] * w + i] += 1
            p = pri[m]
            key = keys[m]
            anyf = False
            if p > cold_pri:
                for i in range(w):
                    f = ((cold[i] >> (col[i] >> band_shift)) & 1 == 1) | (xr[i] >= kth[i])
                    flag[i] = f
                    anyf |= f
            else:
                for i in range(w):
                    f = (p <= bthr[i, col[i] >> band_shift]) | (xr[i] >= kth[i])
                    flag[i] = f
                    anyf |= f
            if not anyf:
                continue
            for i in range(w):  # the rare values that may enter a band or the top-k: exact tests
                if not flag[i]:
                    continue
                u = u0 + i
                v = xr[i]
                b = col[i] >> band_shift
                if p <= bthr[i, b]:
                    j = wb[i, b]
                    if p < band_pri[u, b, j] or key < band_keys[u, b, j]:
                        band_pri[u, b, j] = p
                        band_keys[u, b, j] = key
                        band_vals[u, b, j] = v
                        if filling[i]:
                            src_band[i, b, j] = m
                        else:
                            _window(x, tokens, lengths, T, before, rows[m], u, band_tok[u, b, j], band_val[u, b, j])
                        wb[i, b] = _worst_band(band_pri, band_keys, u, b)
                        bthr[i, b] = band_pri[u, b, wb[i, b]]
                        if bthr[i, b] < cold_pri:
                            cold[i] &= ~(np.int32(1) << b)
                if v >= kth[i]:
                    j = wt[i]
                    if v > kth[i] or key < top_keys[u, j]:
                        top_vals[u, j] = v
                        top_keys[u, j] = key
                        if filling[i]:
                            src_top[i, j] = m
                        else:
                            _window(x, tokens, lengths, T, before, rows[m], u, top_tok[u, j], top_val[u, j])
                        wt[i] = _worst_top(top_vals, top_keys, u)
                        kth[i] = top_vals[u, wt[i]]
        for i in range(w):
            if filling[i]:
                u = u0 + i
                for j in range(src_top.shape[1]):
                    if src_top[i, j] >= 0:
                        _window(x, tokens, lengths, T, before, rows[src_top[i, j]], u, top_tok[u, j], top_val[u, j])
                for b in range(nb):
                    for j in range(src_band.shape[2]):
                        if src_band[i, b, j] >= 0:
                            _window(x, tokens, lengths, T, before, rows[src_band[i, b, j]], u, band_tok[u, b, j],
                                    band_val[u, b, j])
        for i in range(w):
            s1[u0 + i] += a1[i]
            s2[u0 + i] += a2[i]
            for c in range(nbin):
                hist[u0 + i, c] += h[c * w + i]


_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


@njit(inline="always", fastmath={"reassoc", "contract"})
def _ln_bits(bits):  # pragma: no cover - compiled
    """ln of a positive normal float32 given its bits (int32): exponent plus an atanh series on the
    mantissa in [sqrt(1/2), sqrt(2)) (truncation < 2e-11). Plain arithmetic, so loops over it vectorise
    (math.log does not: it is a libm call per element)."""
    e = np.float64((bits >> 23) - 127)
    m = 1.0 + np.float64(bits & 0x7FFFFF) * (1.0 / 8388608.0)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    return e * _LN2 + 2.0 * s * (1.0 + z * (1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11))))))


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def head_stats(P, lengths, offsets, pair_min, stats, n_pairs, pair_k, pair_w):  # pragma: no cover - compiled
    """Per counted query of every sequence and head, from its pattern row p[0..q]:
    stats[h, i] = (p[0], p[q], p[q-1], sum_k p[k](q-k), -sum_k p[k] ln p[k], max_{k>=1} p[k], first argmax)
    with i = offsets[b] + q - 1 (queries 1..L-1 of sequence b, corpus order); n_pairs[h, i] = how many
    p[k] >= pair_min (compared in float32, as the torch path does) with k >= 1, and the first cap of them in pair_k / pair_w [H, M, cap] (key, weight;
    key order) while the row is in cache: the caller lists rows with more than cap through head_pairs.
    P: [B, H, T, T] float32; stats [H, M, 7] float64; n_pairs [H, M] int64; pair_k int32, pair_w float32.
    Subnormal weights (< 1.2e-38) add nothing to the entropy (their true share is below 1e-36)."""
    cap = pair_k.shape[2]
    B, H = P.shape[0], P.shape[1]
    bits = P.view(np.int32)
    pmb = np.array([pair_min], np.float32).view(np.int32)[0]  # w >= pair_min in float32, as bits
    for task in prange(B * H):
        # head-major: prange hands each thread a contiguous range of tasks, and a sequence's cost grows
        # with its length squared; this way every thread gets all the sequences of its heads
        h = task // B
        b = task % B
        for qi in range(1, lengths[b]):
            row = P[b, h, qi]
            rb = bits[b, h, qi]
            d = 0.0
            e = 0.0
            for k in range(qi + 1):  # vectorised: distance and entropy
                w = np.float64(row[k])
                d += w * (qi - k)
                e -= w * _ln_bits(rb[k]) if rb[k] >= 0x00800000 else 0.0
            mb = rb[1]  # weights are >= 0: their bits order like their values, and integers vectorise
            c = 0
            for k in range(1, qi + 1):
                mb = max(mb, rb[k])
                c += rb[k] >= pmb
            am = 1
            while am < qi and rb[am] != mb:
                am += 1
            mx = row[am]
            i = offsets[b] + qi - 1
            if c:
                j = 0
                need = min(c, cap)
                for k in range(1, qi + 1):
                    if rb[k] >= pmb:
                        pair_k[h, i, j] = k
                        pair_w[h, i, j] = row[k]
                        j += 1
                        if j == need:  # all found: skip the rest of the row
                            break
            stats[h, i, 0] = row[0]
            stats[h, i, 1] = row[qi]
            stats[h, i, 2] = row[qi - 1]
            stats[h, i, 3] = d
            stats[h, i, 4] = e
            stats[h, i, 5] = mx
            stats[h, i, 6] = am
            n_pairs[h, i] = c


@njit(parallel=True, cache=True, nogil=True)
def head_pairs(P, lengths, starts, pair_min, out_b, out_h, out_q, out_k, out_w):  # pragma: no cover - compiled
    """List every weight p[k] >= pair_min (k >= 1) of the counted queries: task (b, h) writes its pairs
    from starts[b * H + h] on, in (query, key) order. Outputs [total] int64 (b, h, q, k) and float32 w."""
    B, H = P.shape[0], P.shape[1]
    pm = np.float32(pair_min)
    for t in prange(B * H):
        h = t // B  # head-major, as in head_stats
        b = t % B
        o = starts[b * H + h]
        for qi in range(1, lengths[b]):
            for k in range(1, qi + 1):
                w = P[b, h, qi, k]
                if w >= pm:
                    out_b[o] = b
                    out_h[o] = h
                    out_q[o] = qi
                    out_k[o] = k
                    out_w[o] = w
                    o += 1


def warm() -> None:
    """Load (or compile) every kernel and start numba's thread pool on a tiny input, so the first real
    batch is not charged for it (about half a second from the on-disk cache, longer on first compile)."""
    x = np.zeros((2, 3), np.float32)
    rows = np.arange(2, dtype=np.int64)
    vmax, vmin = np.full(3, -np.inf, np.float32), np.full(3, np.inf, np.float32)
    z = np.zeros(2, np.int64)
    neuron_update(x, rows, z, z, z, np.ones(3, np.float32), 4096.0, np.zeros((3, 128), np.int64), np.zeros(3), np.zeros(3),
                  np.zeros((1, 3)), np.full((3, 2), -np.inf, np.float32), np.full((3, 2), 2**62, np.int64),
                  np.zeros((3, 2, 4), np.int32), np.zeros((3, 2, 4), np.float32),
                  np.full((3, 16, 2), 2**62, np.int64), np.full((3, 16, 2), 2**62, np.int64), np.zeros((3, 16, 2), np.float32),
                  np.zeros((3, 16, 2, 4), np.int32), np.zeros((3, 16, 2, 4), np.float32), 3, COLD,
                  np.zeros(2, np.int64), np.array([2], np.int64), 2, 1, vmax, vmin, np.zeros(3, np.int64),
                  np.zeros(1, np.int64))
    P = np.full((1, 1, 2, 2), 0.5, np.float32)
    L, off = np.array([2], np.int64), np.zeros(1, np.int64)
    stats, n_pairs = np.empty((1, 1, 7)), np.empty((1, 1), np.int64)
    head_stats(P, L, off, 0.1, stats, n_pairs, np.empty((1, 1, 1), np.int32), np.empty((1, 1, 1), np.float32))
    out = [np.empty(1, np.int64) for _ in range(4)] + [np.empty(1, np.float32)]
    head_pairs(P, L, np.zeros(1, np.int64), 0.1, *out)
