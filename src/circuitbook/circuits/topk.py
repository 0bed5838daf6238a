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


def chunked_tops(row_fn: RowFn, n_rows: int, n_cols: int, k: int = 10, n_pairs: int = 0, bottom: bool = True,
                 pair_bottom: bool | None = None, norms: bool = False, lse: bool = False,
                 max_elems: int = 1 << 24, progress: Callable[[int], None] | None = None) -> Tops:
    """Reduce the matrix ``row_fn`` describes without ever holding more than ~``max_elems`` entries.

    k: per-row top-k (and bottom-k if ``bottom``); 0 skips per-row results.
    n_pairs: size of the global top-N (and bottom-N if ``pair_bottom``, default = ``bottom``); 0 skips.
    progress(rows_done) is called after each chunk.
    """
    pair_bottom = bottom if pair_bottom is None else pair_bottom
    k = min(k, n_cols)
    kk = min(max(k, n_pairs), n_cols)  # per-row candidates needed for an exact global top-N
    chunk = max(1, max_elems // max(1, n_cols))
    out = Tops()
    tid, tval, bid, bval, nrm, lses = [], [], [], [], [], []
    best_top = best_bot = None
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        m = row_fn(start, stop).float()
        rows = torch.arange(start, stop)[:, None]
        for largest in ((True, False) if (bottom or pair_bottom) else (True,)):
            want_rows = k > 0 and (largest or bottom)
            want_pairs = n_pairs > 0 and (largest or pair_bottom)
            if not (want_rows or want_pairs):
                continue
            v, i = torch.topk(m, kk if want_pairs else k, dim=-1, largest=largest, sorted=True)
            if want_rows:
                (tid if largest else bid).append(i[:, :k])
                (tval if largest else bval).append(v[:, :k])
            if want_pairs:
                r = rows.expand_as(i).reshape(-1)
                if largest:
                    best_top = _merge(best_top, v.reshape(-1), r, i.reshape(-1), n_pairs, True)
                else:
                    best_bot = _merge(best_bot, v.reshape(-1), r, i.reshape(-1), n_pairs, False)
        if norms:
            nrm.append(m.norm(dim=-1))
        if lse:
            lses.append(torch.logsumexp(m, dim=-1))
        del m
        if progress is not None:
            progress(stop)
    if k > 0:
        out.top = RowTops(torch.cat(tid), torch.cat(tval))
        if bottom:
            out.bottom = RowTops(torch.cat(bid), torch.cat(bval))
    if best_top is not None:
        out.top_pairs = Pairs(best_top[1], best_top[2], best_top[0])
    if best_bot is not None:
        out.bottom_pairs = Pairs(best_bot[1], best_bot[2], best_bot[0])
    if norms:
        out.norms = torch.cat(nrm)
    if lse:
        out.lse = torch.cat(lses)
    return out


def factored_row_fn(A: Tensor, B: Tensor, col_bias: Tensor | None = None) -> RowFn:
    """Rows of ``A @ B`` (A [n_rows, r], B [r, n_cols], r small), plus an optional per-column bias [n_cols]."""
    def fn(start: int, stop: int) -> Tensor:
        m = A[start:stop] @ B
        return m + col_bias if col_bias is not None else m
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
                          bottom_pairs: bool = True, max_elems: int = 1 << 24,
                          progress: Callable[[int], None] | None = None) -> CircuitTops:
    """Per-row top-k and global top/bottom-N pairs of ``A @ B`` (A [n, r], B [r, m]) in row chunks."""
    t = chunked_tops(factored_row_fn(A, B), A.shape[0], B.shape[1], k=k, n_pairs=n_pairs, bottom=False,
                     pair_bottom=bottom_pairs, max_elems=max_elems, progress=progress)
    return CircuitTops(name, t.top, t.top_pairs, t.bottom_pairs)
