"""One-pass row reductions of a product block (numba, parallel over rows): top-c, bottom-c, max, min, norm.

``torch.topk`` on a CPU walks a [rows, 50257] block once per call and per side, single-threaded for a
short row count, and a separate pass each for ``amax`` / ``amin`` / ``norm``. :func:`row_extremes` visits
every value once, while its row is in cache, with both threads busy (rows split between threads): a value
enters the top (bottom) candidates only if it beats the worst one kept, so almost every value costs two
compares. Results are exact: the kept entries are the row's c largest (smallest) values, ordered by value
(best first) then column ascending, as a dense sort would give.

bfloat16 blocks are read as their 16 raw bits and widened to float32 exactly (a bf16 is the top half of a
float32), so the screening matmul's output needs no conversion pass.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor


@njit(inline="always")
def _worst(v, c, top):  # pragma: no cover - compiled
    """Slot of the worst kept entry: the smallest for a top list, the largest for a bottom list."""
    w = 0
    for j in range(1, c):
        if (v[j] < v[w]) if top else (v[j] > v[w]):
            w = j
    return w


@njit(inline="always", fastmath=True)
def _scan_row(x, ct, cb, tv, ti, bv, bi, ext, i):  # pragma: no cover - compiled
    """Top-ct / bottom-cb candidates of row x into tv/ti, bv/bi (unsorted); ext[i] = (max, min, sum sq).

    The row is read in blocks of 32: a vectorised max / min / sum of squares per block, and only a block
    whose max beats the worst kept top entry (whose min beats the worst bottom one) is scanned value by
    value. The lists start with the row's first entries (no infinities: fastmath)."""
    n = x.shape[0]
    for j in range(ct):
        tv[j], ti[j] = x[j], j
    for j in range(cb):
        bv[j], bi[j] = x[j], j
    wt = _worst(tv, ct, True) if ct else 0
    wb = _worst(bv, cb, False) if cb else 0
    tt, tb = tv[wt], bv[wb]
    mx, mn, ss = x[0], x[0], 0.0
    for b0 in range(0, n, 32):
        b1 = min(n, b0 + 32)
        bmx, bmn, bss = x[b0], x[b0], np.float32(0.0)
        for j in range(b0, b1):
            a = x[j]
            bmx = max(bmx, a)
            bmn = min(bmn, a)
            bss += a * a
        ss += bss
        mx, mn = max(mx, bmx), min(mn, bmn)
        if ct and bmx > tt:
            for j in range(max(b0, ct), b1):
                if x[j] > tt:
                    tv[wt], ti[wt] = x[j], j
                    wt = _worst(tv, ct, True)
                    tt = tv[wt]
        if cb and bmn < tb:
            for j in range(max(b0, cb), b1):
                if x[j] < tb:
                    bv[wb], bi[wb] = x[j], j
                    wb = _worst(bv, cb, False)
                    tb = bv[wb]
    ext[i, 0], ext[i, 1], ext[i, 2] = mx, mn, ss


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _extremes_f32(M, ct, cb, tv, ti, bv, bi, ext):  # pragma: no cover - compiled
    for i in prange(M.shape[0]):
        _scan_row(M[i], ct, cb, tv[i], ti[i], bv[i], bi[i], ext, i)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _extremes_bf16(M, ct, cb, tv, ti, bv, bi, ext):  # pragma: no cover - compiled
    n = M.shape[1]
    for i in prange(M.shape[0]):
        buf = np.empty(n, np.uint32)
        row = M[i]
        for j in range(n):
            buf[j] = np.uint32(row[j]) << np.uint32(16)
        _scan_row(buf.view(np.float32), ct, cb, tv[i], ti[i], bv[i], bi[i], ext, i)


def _order(v: Tensor, i: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """Sort candidates best first, ties by column ascending (columns are distinct, so this is total)."""
    i, o = i.sort(dim=-1)
    v = v.gather(1, o)
    v, o = v.sort(dim=-1, descending=largest, stable=True)
    return v, i.gather(1, o)


def row_extremes(M: Tensor, c_top: int, c_bottom: int = 0):
    """One pass over ``M`` [rows, n] (float32 or bfloat16, CPU, rows contiguous).

    Returns (top_vals, top_ids) [rows, c_top], (bottom_vals, bottom_ids) [rows, c_bottom] (float32 values,
    best first, ties by column), and row max, row min, row L2 norm [rows] (float32; the norm summed in
    float64). c_top, c_bottom <= n."""
    from ..scan.kernels import LOCK

    r, n = M.shape
    if M.stride(1) != 1:
        M = M.contiguous()
    if M.dtype == torch.bfloat16:
        arr, fn = M.view(torch.int16).numpy().view(np.uint16), _extremes_bf16
    else:
        arr, fn = M.float().numpy(), _extremes_f32
    tv, bv = np.empty((r, max(c_top, 1)), np.float32), np.empty((r, max(c_bottom, 1)), np.float32)
    ti, bi = np.empty((r, max(c_top, 1)), np.int64), np.empty((r, max(c_bottom, 1)), np.int64)
    ext = np.empty((r, 3), np.float64)
    with LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        fn(arr, c_top, c_bottom, tv, ti, bv, bi, ext)
    top = _order(torch.from_numpy(tv[:, :c_top]), torch.from_numpy(ti[:, :c_top]), True)
    bot = _order(torch.from_numpy(bv[:, :c_bottom]), torch.from_numpy(bi[:, :c_bottom]), False)
    e = torch.from_numpy(ext)
    return top, bot, e[:, 0].float(), e[:, 1].float(), e[:, 2].sqrt().float()
