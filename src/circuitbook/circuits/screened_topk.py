"""Top-k over big matrices that are never materialised: rows are produced in chunks, reduced, dropped.

A ``[n_rows, n_cols]`` matrix (e.g. the 50257 x 50257 OV circuit) is described by ``row_fn(start, stop)``
returning rows ``start:stop`` as a float tensor. :func:`chunked_tops` walks it in chunks of about
``max_elems`` entries and keeps, per row, the top-k (and bottom-k) columns, plus a running global top-N of
(row, col) pairs. Memory is one chunk plus the results, whatever the matrix size.

Exactness of the global top-N: every entry of the global top-N is in its own row's top-N, so the global
top-N is the top-N of the per-row top-N candidates; we merge those chunk by chunk.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from .basis import CircuitError

RowFn = Callable[[int, int], Tensor]


@dataclasses.dataclass
class RowTops:
    """Per-row extremes of a ``[n_rows, n_cols]`` matrix.

    ids  [n_rows, k] int64: column indices, best first (largest for "top", smallest for "bottom").
    vals [n_rows, k] float32: the matrix entries at those columns, in the same order.
    """

    ids: Tensor
    vals: Tensor


@dataclasses.dataclass
class Pairs:
    """Global extremes: the N (row, col) entries with the largest (or smallest) values, best first.

    rows, cols [N] int64; vals [N] float32.
    """

    rows: Tensor
    cols: Tensor
    vals: Tensor

    def __len__(self) -> int:
        return len(self.vals)

    def as_list(self) -> list[tuple[int, int, float]]:
        return list(zip(self.rows.tolist(), self.cols.tolist(), self.vals.tolist()))


@dataclasses.dataclass
class Tops:
    """What :func:`chunked_tops` found. Fields it was not asked for are None.

    top, bottom: per-row :class:`RowTops`; top_pairs, bottom_pairs: global :class:`Pairs`;
    norms [n_rows]: L2 norm of each row; lse [n_rows]: logsumexp of each row (turns values into log-probs).
    """

    top: RowTops | None = None
    bottom: RowTops | None = None
    top_pairs: Pairs | None = None
    bottom_pairs: Pairs | None = None
    norms: Tensor | None = None
    lse: Tensor | None = None


def _merge(best: tuple[Tensor, Tensor, Tensor] | None, vals: Tensor, rows: Tensor, cols: Tensor, n: int,
           largest: bool) -> tuple[Tensor, Tensor, Tensor]:
    if best is not None:
        vals, rows, cols = torch.cat([best[0], vals]), torch.cat([best[1], rows]), torch.cat([best[2], cols])
    keep = torch.topk(vals, min(n, len(vals)), largest=largest, sorted=True).indices
    return vals[keep], rows[keep], cols[keep]


def row_extremes(M: Tensor, c_top: int, c_bottom: int = 0, norms: bool = True):
    """Per-row top-c_top and bottom-c_bottom (vals, ids) of ``M`` [rows, n], best first, and the row max,
    min and L2 norm [rows] (norm None unless ``norms``): one fused parallel pass on a CPU
    (:mod:`.kernels`), torch reductions elsewhere. Values float32."""
    if M.device.type == "cpu" and M.dtype in (torch.float32, torch.bfloat16) and M.shape[1] > 0:
        from .kernels import row_extremes as kernel

        top, bot, mx, mn, nr = kernel(M, c_top, c_bottom)
        return top, bot, mx, mn, nr if norms else None
    M = M.float()
    top = torch.topk(M, c_top, dim=-1, sorted=True)
    bot = torch.topk(M, c_bottom, dim=-1, largest=False, sorted=True)
    return ((top.values, top.indices), (bot.values, bot.indices), M.amax(-1), M.amin(-1),
            M.norm(dim=-1) if norms else None)


def chunked_tops(row_fn: RowFn, n_rows: int, n_cols: int, k: int = 10, n_pairs: int = 0, bottom: bool = True,
                 pair_bottom: bool | None = None, norms: bool = False, lse: bool = False,
                 max_elems: int = 1 << 24, progress: Callable[[int], None] | None = None) -> Tops:
    """Reduce the matrix ``row_fn`` describes without ever holding more than ~``max_elems`` entries.

    k: per-row top-k (and bottom-k if ``bottom``); 0 skips per-row results.
    n_pairs: size of the global top-N (and bottom-N if ``pair_bottom``, default = ``bottom``); 0 skips.
    progress(rows_done) is called after each chunk. ``row_fn`` may return a reused buffer: nothing here keeps a
    reference to a chunk after the next call.

    Global pairs are pruned by rows: once N pairs are known, a row whose maximum is not above the N-th best
    value cannot contribute, so only the few "hot" rows of a chunk get a top-N (exact, and far cheaper than a
    top-N of every row). Per-row tops, row extremes and norms come from one pass over each chunk
    (:func:`row_extremes`).
    """
    pair_bottom = bottom if pair_bottom is None else pair_bottom
    k = min(k, n_cols)
    npair = min(n_pairs, n_cols)
    chunk = max(1, max_elems // max(1, n_cols))
    out = Tops()
    res = {True: ([], []), False: ([], [])}  # largest -> (ids, vals) per chunk
    best: dict[bool, tuple[Tensor, Tensor, Tensor] | None] = {True: None, False: None}
    nrm, lses = [], []
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        m = row_fn(start, stop)
        if m.dtype != torch.float32:
            m = m.float()
        top, bot, mx, mn, nr = row_extremes(m, k, k if bottom else 0, norms)
        for largest in (True, False):
            want_rows = k > 0 and (largest or bottom)
            want_pairs = n_pairs > 0 and (pair_bottom if not largest else True)
            if want_rows:
                v, i = top if largest else bot
                res[largest][0].append(i)
                res[largest][1].append(v)
            if want_pairs:
                edge = mx if largest else mn
                b = best[largest]
                if b is None or len(b[0]) < n_pairs:
                    hot = torch.arange(stop - start)
                else:
                    tau = b[0][-1]
                    hot = (edge > tau if largest else edge < tau).nonzero()[:, 0]
                if len(hot):
                    pv, pi = torch.topk(m[hot], npair, dim=-1, largest=largest, sorted=True)
                    r = (hot + start)[:, None].expand_as(pi).reshape(-1)
                    best[largest] = _merge(b, pv.reshape(-1), r, pi.reshape(-1), n_pairs, largest)
        if norms:
            nrm.append(nr)
        if lse:
            lses.append(torch.logsumexp(m, dim=-1))
        del m
        if progress is not None:
            progress(stop)
    if k > 0:
        out.top = RowTops(torch.cat(res[True][0]), torch.cat(res[True][1]))
        if bottom:
            out.bottom = RowTops(torch.cat(res[False][0]), torch.cat(res[False][1]))
    if best[True] is not None:
        out.top_pairs = Pairs(best[True][1], best[True][2], best[True][0])
    if best[False] is not None:
        out.bottom_pairs = Pairs(best[False][1], best[False][2], best[False][0])
    if norms:
        out.norms = torch.cat(nrm)
    if lse:
        out.lse = torch.cat(lses)
    return out


def factored_row_fn(A: Tensor, B: Tensor, col_bias: Tensor | None = None) -> RowFn:
    """Rows of ``A @ B`` (A [n_rows, r], B [r, n_cols], r small), plus an optional per-column bias [n_cols].

    Writes into one reused buffer: a fresh 64 MB chunk per call costs page faults comparable to the matmul."""
    A, B = A.float(), B.float().contiguous()
    buf: list[Tensor] = []

    def fn(start: int, stop: int) -> Tensor:
        n = stop - start
        if not buf or buf[0].shape[0] < n:
            buf[:] = [torch.empty(n, B.shape[1], dtype=torch.float32, device=B.device)]
        m = torch.mm(A[start:stop], B, out=buf[0][:n])
        return m.add_(col_bias) if col_bias is not None else m
    return fn


@dataclasses.dataclass
class CircuitTops:
    """Tops of one token x token circuit ``A @ B`` ([d_vocab, d_vocab], never materialised).

    name:   which circuit, e.g. "L0H3" (a head) or "L0H3>L1H2" (a virtual head).
    top:    RowTops ids/vals [d_vocab, k]: for each row token (OV: source; QK: query) the best column tokens
            (OV: promoted outputs; QK: preferred keys), best first.
    top_pairs / bottom_pairs: Pairs (row token, column token, value) with the largest / smallest values
            over the whole matrix; bottom_pairs is None when not asked for.
    """

    name: str
    top: RowTops
    top_pairs: Pairs
    bottom_pairs: Pairs | None = None


def factored_circuit_tops(name: str, A: Tensor, B: Tensor, k: int = 10, n_pairs: int = 100,
                          bottom_pairs: bool = True, max_elems: int = 1 << 24, fast: bool = True,
                          progress: Callable[[int], None] | None = None, screen: torch.dtype | None = None
                          ) -> CircuitTops:
    """Per-row top-k and global top/bottom-N pairs of ``A @ B`` (A [n, r], B [r, m]) in row chunks.

    fast=True screens with a cheap matmul and rescores in float32 with a proven error bound
    (:func:`fast_factored_tops`; ``screen`` = its dtype, None: the faster one on this machine, measured by
    :mod:`circuitbook.tune`); results are the same as the float32 path (exact up to float32 rounding and ties)."""
    if fast:
        t = fast_factored_tops(A, B, k, n_pairs, bottom_pairs, max_elems=max_elems, progress=progress,
                               screen=screen)
    else:
        t = chunked_tops(factored_row_fn(A, B), A.shape[0], B.shape[1], k=k, n_pairs=n_pairs, bottom=False,
                         pair_bottom=bottom_pairs, max_elems=max_elems, progress=progress)
    return CircuitTops(name, t.top, t.top_pairs, t.bottom_pairs)


BF16_UNIT = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
FP32_UNIT = 2.0 ** -24  # unit roundoff of float32


def screen_bound(A32: Tensor, B32: Tensor, screen: torch.dtype) -> Tensor:
    """delta [n]: ``|screen(A_i . B_j) - float32(A_i . B_j)| <= delta_i`` for every column j.

    bfloat16 (inputs rounded to bf16, float32 accumulation, output rounded to bf16): 3u + O(u^2) relative to
    ``||A_i|| ||B_j||`` (u = 2^-8), kept as 4u. float32: the screen and the rescore are two float32 dot
    products of length r in different orders, each within ``r u / (1 - r u) ||A_i|| ||B_j||`` of the exact
    one (u = 2^-24, Cauchy-Schwarz), plus the output rounding: kept as ``2 (r + 2) u``."""
    scale = A32.norm(dim=1) * B32.norm(dim=0).max()
    if screen == torch.bfloat16:
        return 4 * BF16_UNIT * scale
    if screen == torch.float32:
        return 2 * (A32.shape[1] + 2) * FP32_UNIT * scale
    raise CircuitError(f"no screening error bound for dtype {screen}; use torch.float32 or torch.bfloat16")


def _merge_candidates(best, exact: Tensor, cols: Tensor, edge: Tensor, rows: Tensor, delta: Tensor, A32: Tensor,
                      B32: Tensor, start: int, n_pairs: int, largest: bool):
    """Merge one side's pairs of a screened chunk into ``best`` (see :func:`fast_factored_tops`).

    exact, cols [r, c]: a row's c best candidates by screened value, rescored in float32; edge [r]: the
    screened value of its last candidate; rows [r] (chunk-relative), delta [r]. Rows whose other columns can
    still beat the N-th best (edge within delta of it) are recomputed whole in float32."""
    tau = best[0][-1]
    deep = (edge + delta > tau) if largest else (edge - delta < tau)
    keep = (exact > tau) if largest else (exact < tau)
    keep &= ~deep[:, None]
    if keep.any():
        ri, ci = keep.nonzero(as_tuple=True)
        best = _merge(best, exact[ri, ci], rows[ri] + start, cols[ri, ci], n_pairs, largest)
    if deep.any():
        d = deep.nonzero()[:, 0]
        pv, pi = torch.topk(A32[start + rows[d]] @ B32, min(n_pairs, B32.shape[1]), dim=-1, largest=largest)
        rr = (rows[d] + start)[:, None].expand_as(pi).reshape(-1)
        best = _merge(best, pv.reshape(-1), rr, pi.reshape(-1), n_pairs, largest)
    return best


def fast_factored_tops(A: Tensor, B: Tensor, k: int = 10, n_pairs: int = 100, bottom_pairs: bool = True,
                       margin: int = 16, max_elems: int = 1 << 24,
                       progress: Callable[[int], None] | None = None, stats: dict | None = None,
                       screen: torch.dtype | None = None) -> Tops:
    """Exact per-row top-k and global top/bottom-N of ``A @ B``, screening with a cheap matmul.

    ``screen``: the screening dtype, torch.bfloat16 or torch.float32; None takes the faster on this machine
    (:func:`circuitbook.tune.screen_dtype`, measured once and cached: bf16 wins where the CPU has AVX-512
    BF16 / AMX, float32 where bf16 is emulated).

    Why it is exact: the screened product differs from the float32 one by at most ``delta_i``
    (:func:`screen_bound`, for the screening dtype). Per row we take the top-(k + margin) columns by the
    screened values, recompute them in float32, and accept the top-k if the k-th exact value beats every
    column left out (each is at most the last candidate's screened value + delta_i); rows that fail are
    recomputed in float32. Global pairs: rows whose screened maximum + delta_i cannot reach the current N-th
    best are skipped (likewise minimum - delta_i for the bottom); the others are recomputed in float32.
    Each screened chunk is read once (:func:`row_extremes`: candidates, row max and min in one pass).
    ``stats`` (a dict) receives the number of rows that needed a full recompute and the screening dtype.
    """
    n, m = A.shape[0], B.shape[1]
    A32, B32 = A.float().contiguous(), B.float().contiguous()
    if screen is None:
        from ..tune import screen_dtype

        screen = screen_dtype(A.shape[1], m, max(1, max_elems // max(1, m))) if A.device.type == "cpu" \
            else torch.bfloat16
    delta_all = screen_bound(A32, B32, screen)  # [n]
    Bt32 = B32.T.contiguous()
    As, Bs = A32.to(screen), B32.to(screen)
    k = min(k, m)
    c = min(k + margin, m)
    npair = min(n_pairs, m)
    chunk = max(1, max_elems // max(1, m))
    buf = torch.empty(min(chunk, n), m, dtype=screen, device=A.device)
    ids_out, vals_out = [], []
    best: dict[bool, tuple[Tensor, Tensor, Tensor] | None] = {True: None, False: None}
    n_fallback = 0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        r = stop - start
        M = torch.mm(As[start:stop], Bs, out=buf[:r])
        delta = delta_all[start:stop]
        want_bottom = n_pairs > 0 and bottom_pairs
        (av, cols), (bv, bcols), rowmax, rowmin, _ = row_extremes(M, c, c if want_bottom else 0, norms=False)
        exact = torch.einsum("re,rce->rc", A32[start:stop], Bt32[cols])  # the candidates in float32
        if k > 0:
            ev, ei = exact.topk(k, dim=-1)
            ids, vals = cols.gather(1, ei), ev
            # every column left out is at most av[:, -1] + delta in exact value
            bad = (ev[:, -1] < av[:, -1] + delta) if c < m else torch.zeros(r, dtype=torch.bool)
            if bad.any():
                rows = bad.nonzero()[:, 0]
                n_fallback += len(rows)
                fv, fi = (A32[start + rows] @ B32).topk(k, dim=-1)
                ids[rows], vals[rows] = fi, fv
            ids_out.append(ids)
            vals_out.append(vals)
        if n_pairs > 0:
            sides = (True, False) if bottom_pairs else (True,)
            if best[True] is None or len(best[True][0]) < n_pairs or (bottom_pairs and len(best[False][0]) < n_pairs):
                full = A32[start:stop] @ B32  # too few pairs yet to prune with: take the whole chunk once
                for largest in sides:
                    pv, pi = torch.topk(full, npair, dim=-1, largest=largest, sorted=True)
                    rr = torch.arange(start, stop)[:, None].expand_as(pi).reshape(-1)
                    best[largest] = _merge(best[largest], pv.reshape(-1), rr, pi.reshape(-1), n_pairs, largest)
                del full
            else:
                for largest in sides:
                    tau = best[largest][0][-1]
                    hot = (rowmax + delta > tau if largest else rowmin - delta < tau).nonzero()[:, 0]
                    if not len(hot):
                        continue
                    if largest:
                        ex, cc, edge = exact[hot], cols[hot], av[hot, -1]
                    else:
                        ex = torch.einsum("re,rce->rc", A32[start + hot], Bt32[bcols[hot]])
                        cc, edge = bcols[hot], bv[hot, -1]
                    if c == m:  # every column is a candidate: nothing left out
                        edge = torch.full_like(edge, -float("inf") if largest else float("inf"))
                    best[largest] = _merge_candidates(best[largest], ex, cc, edge, hot, delta[hot], A32, B32,
                                                      start, n_pairs, largest)
        if progress is not None:
            progress(stop)
    if stats is not None:
        stats["fallback_rows"] = stats.get("fallback_rows", 0) + n_fallback
        stats["screen"] = str(screen).removeprefix("torch.")
    out = Tops()
    if k > 0:
        out.top = RowTops(torch.cat(ids_out), torch.cat(vals_out))
    if best[True] is not None:
        out.top_pairs = Pairs(best[True][1], best[True][2], best[True][0])
    if best[False] is not None:
        out.bottom_pairs = Pairs(best[False][1], best[False][2], best[False][0])
    return out
