"""Everything the scan records about the MLP neurons of one layer, updated one batch at a time.

All neurons are handled at once as a [d_mlp, positions] matrix: no per-neuron Python loop.

Exact, order-independent sums: values are rounded to a 2**-12 grid (``Q``) before summing in float64.
Sums of integers below 2**53 are exact whatever the order, so means, variances and per-token means come
out bit-identical after a resume, across shards and merges (while sum(x^2) stays below 2**29 per
neuron, i.e. for any realistic corpus; beyond that they are still float64-accurate).

State (n = d_mlp):
    count            int         positions seen (BOS and padding excluded)
    s1, s2           [n] float64 sum of round(x*Q) and of round(x*Q)**2
    vmax, vmin       [n] float32 extremes
    hist             PowerHistogram (also gives the firing count: values > 0)
    top              TopK of the k largest activations with their windows
    bands            BandReservoir of r examples per activation band
    tok_ids          [v] int64 token ids seen, in first-seen order; tok_rows [v, n] float64 sum of
                     round(x*Q) per (token, neuron); tok_count [v] int64 occurrences
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import CircuitbookError
from .context import BatchContext
from .histogram import HALF, PowerHistogram, level
from .reservoir import BAND_SHIFT, N_BANDS, BandReservoir, priority
from .mergeable_topk import TopK, topk_rows

Q = 4096.0


def use_kernels(choice: str, t: Tensor) -> bool:
    """Whether to run the fused CPU kernels (kernels.py) on tensor t: ``choice`` is "auto" (yes on a CPU
    when numba imports), "numba" or "torch"."""
    if choice == "torch" or t.device.type != "cpu":
        return False
    try:
        from . import kernels  # noqa: F401
    except ImportError:
        if choice == "numba":
            raise
        return False
    return True


class NeuronAccumulator:
    kernels = "auto"  # "auto" | "numba" | "torch": see use_kernels (results are identical)
    prefix_min = 256  # rows (in priority order) tested exactly against every band's threshold
    heavy_min = 0  # a unit with more candidates than max(this, 4k, M/8) is handled densely

    def __init__(self, n: int, k: int, r: int, width: int, d_vocab: int, device="cpu"):
        self.n, self.d_vocab = n, d_vocab
        self.count = 0
        self.s1 = torch.zeros(n, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(n, dtype=torch.float64, device=device)
        self.vmax = torch.full((n,), float("-inf"), device=device)
        self.vmin = torch.full((n,), float("inf"), device=device)
        self.hist = PowerHistogram(n, device)
        self.top = TopK(n, k, width, device)
        self.bands = BandReservoir(n, r, width, device)
        self.tok_ids = torch.zeros(0, dtype=torch.long, device=device)
        self.tok_rows = torch.zeros(0, n, dtype=torch.float64, device=device)
        self.tok_count = torch.zeros(0, dtype=torch.long, device=device)
        self._row_of = torch.full((d_vocab,), -1, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ one batch
    def update(self, acts: Tensor, ctx: BatchContext) -> None:
        """acts: [B, T, n] the layer's ``mlp.hook_post`` for the batch described by ``ctx``.

        Cost: a handful of elementwise passes over the batch's [positions, n] values (histogram bins,
        the exact sums) plus one comparison pass that finds the few values that can change anything
        else. Top-k, extremes and band samples only look at those: values beating a unit's k-th best,
        its extremes, or falling in a band that still takes most of this batch's positions (the tails;
        such bands sit at the ends of a unit's range). Bands that take only a few positions can only
        take positions of low priority; the positions are laid out in (priority, key) order, so those
        are the first ``prefix`` rows, tested exactly. Units that do not fit this (the first batches:
        everything is new) are handled densely. Every path is exact: the result does not depend on
        which path a value took."""
        B, T, n = acts.shape
        M = len(ctx.rows)
        if M == 0:
            return
        if use_kernels(self.kernels, acts):
            return self._update_fused(acts, ctx)
        self.count += M
        flat = acts.reshape(B * T, n)
        dev = flat.device
        pri_c = priority(ctx.keys)
        o = ctx.keys.argsort()  # keys ascend along rows already; argsort keeps this cheap and safe
        o = o[torch.sort(pri_c[o], stable=True).indices]  # row r of x = (priority, key) rank r
        pri, keys = pri_c[o], ctx.keys[o]
        x = self._gather(flat, ctx.rows[o])  # [M, n] float32

        # 1. values that can change the top-k, extremes or a tail band, judged on the state before the batch
        prefix = min(M, max(self.prefix_min, M // 16))
        cnt = torch.searchsorted(pri, self.bands.threshold(), right=True).view(n, N_BANDS)
        lo, hi, dense = self._cuts(cnt > prefix)
        heavy = self.heavy_limit(M)
        dense_idx = dense.nonzero()[:, 0]
        if len(dense_idx) < n:
            mask = torch.gt(x, hi).logical_or_(torch.lt(x, lo))
            if len(dense_idx):
                mask[:, dense_idx] = False
            m, u = mask.nonzero(as_tuple=True)
            del mask
            per_unit = torch.bincount(u, minlength=n)
            if bool((per_unit > heavy).any()):  # too many for the sparse path: dense
                dense |= per_unit > heavy
                dense_idx = dense.nonzero()[:, 0]
                keep = ~dense[u]
                m, u = m[keep], u[keep]
        else:
            m = u = torch.zeros(0, dtype=torch.long, device=dev)
        v = x[m, u]
        inv = torch.empty_like(o)
        inv[o] = torch.arange(M, device=dev)  # corpus index -> row
        xd = x.index_select(1, dense_idx) if len(dense_idx) else None  # [M, d] rows in rank order

        # 2. extremes and the histogram level (the level must cover the batch before binning it)
        bmax = torch.full((n,), float("-inf"), device=dev).scatter_reduce_(0, u, v, "amax")
        bmin = torch.full((n,), float("inf"), device=dev).scatter_reduce_(0, u, v, "amin")
        if xd is not None:
            bmax[dense_idx] = xd.amax(0)
            bmin[dense_idx] = xd.amin(0)
        self.vmax = torch.maximum(self.vmax, bmax)
        self.vmin = torch.minimum(self.vmin, bmin)
        shift = self.hist.raise_level(level(torch.maximum(self.vmax.abs(), self.vmin.abs())))
        self.bands.raise_level(shift)
        bins = self._bins(x)  # [M, n] int32 flat bin column * n + u
        self.hist.counts += torch.bincount(bins.reshape(-1), minlength=self.hist.counts.numel()).view(2 * HALF, n).t()

        # 3. exact sums on the 2**-12 grid (integers in float64: any order gives the same bits)
        self._sums(x, ctx.tokens.reshape(-1)[ctx.rows[o]])

        # 4. top-k: sparse candidates >= the k-th best, plus the dense units' batch top-k
        kth = self.top.kth()
        t_ok = v >= kth[u]
        tu, tm, tv = u[t_ok], m[t_ok], v[t_ok]
        if xd is not None:
            xc = xd.t()[:, inv].contiguous()  # [d, M] corpus order: topk_rows breaks ties by column
            dv, dc = topk_rows(xc, self.top.k)
            du = dense_idx[:, None].expand_as(dc).reshape(-1)
            dv, dm = dv.reshape(-1), inv[dc.reshape(-1)]
            ok = dv >= kth[du]
            tu, tm, tv = torch.cat([tu, du[ok]]), torch.cat([tm, dm[ok]]), torch.cat([tv, dv[ok]])
        self.top.offer(tu, tv, keys[tm], lambda j: self._fetch(flat, ctx, tu[j], o[tm[j]]))

        # 5. band reservoirs: a candidate needs priority <= its band's threshold, i.e. row < cnt
        cnt = torch.searchsorted(pri, self.bands.threshold(), right=True).to(torch.int32)  # [n * N_BANDS]
        gp = self._band_groups(bins[:prefix], torch.arange(n, device=dev))  # [prefix, n] group
        okp = cnt[gp] > torch.arange(prefix, device=dev, dtype=torch.int32)[:, None]
        if len(dense_idx):
            okp[:, dense_idx] = False
        bm, bu = okp.nonzero(as_tuple=True)
        bg = gp[bm, bu]
        tail = m >= prefix
        su, sm = u[tail], m[tail]
        sg = self._band_groups(bins[sm, su], su)
        ok = cnt[sg] > sm
        bm, bu, bg = torch.cat([bm, sm[ok]]), torch.cat([bu, su[ok]]), torch.cat([bg, sg[ok]])
        if xd is not None:
            dm, du, dg = self._dense_bands(bins, dense_idx, cnt)
            bm, bu, bg = torch.cat([bm, dm]), torch.cat([bu, du]), torch.cat([bg, dg])
        self.bands.offer(bg, pri[bm], keys[bm], x[bm, bu],
                         lambda j: self._fetch(flat, ctx, bu[j], o[bm[j]])[:2])

    def _update_fused(self, acts: Tensor, ctx: BatchContext) -> None:
        """update() with the fused CPU kernels: same state, bit for bit (see kernels.py)."""
        from . import kernels as K

        with K.LOCK:
            self._update_fused_locked(acts, ctx, K)

    def _update_fused_locked(self, acts: Tensor, ctx: BatchContext, K) -> None:
        K.threads(torch.get_num_threads())  # numba's own pool follows torch's count (a shard job has fewer cores)
        B, T, n = acts.shape
        M = len(ctx.rows)
        K.threads(torch.get_num_threads())
        flat = acts.reshape(B * T, n).float().contiguous()
        x, rows = flat.numpy(), ctx.rows.numpy()
        tok = ctx.tokens.reshape(-1).index_select(0, ctx.rows)
        uniq, counts = torch.unique(tok, return_counts=True)
        rows_u = self._rows_for(uniq)  # (may grow the table: before touching tok_count)
        tok_row = self._row_of.index_select(0, tok).numpy()
        pri = priority(ctx.keys).numpy()
        vmax, vmin = self.vmax.contiguous(), self.vmin.contiguous()
        top, bands = self.top, self.bands
        status = np.zeros(-(-n // K.BLOCK), dtype=np.int64)
        scale = torch.ldexp(torch.ones(n), (HALF.bit_length() - 1 - self.hist.exp).to(torch.int32))
        K.neuron_update(x, rows, tok_row, ctx.keys.numpy(), pri, scale.numpy(), Q,
                        self.hist.counts.numpy(), self.s1.numpy(), self.s2.numpy(), self.tok_rows.numpy(),
                        top.vals.numpy(), top.keys.numpy(), top.ctx_tok.numpy(), top.ctx_val.numpy(),
                        bands.pri.numpy(), bands.keys.numpy(), bands.vals.numpy(), bands.ctx_tok.numpy(),
                        bands.ctx_val.numpy(), BAND_SHIFT, K.COLD, ctx.tokens.reshape(-1).numpy(),
                        ctx.lengths.to(torch.int64).numpy(), T, ctx.before, vmax.numpy(), vmin.numpy(),
                        self.hist.exp.numpy(), status)
        if status.any():  # (those blocks counted nothing; the scan stops here)
            raise CircuitbookError("the model produced NaN MLP activations: the scan cannot rank them "
                                   "(check the weights and the dtype)")
        self.vmax, self.vmin = vmax, vmin
        self.count += M
        self.tok_count.index_add_(0, rows_u, counts)

    def heavy_limit(self, M: int) -> int:
        """A unit with more candidates than this in a batch of M positions is handled densely."""
        return max(self.heavy_min, 4 * self.top.k, M // 8)

    def _cuts(self, wide: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per unit (lo [n], hi [n], dense [n] bool): every value that can change the state is > hi or
        < lo, unless the unit is dense. ``wide`` [n, N_BANDS]: bands that may take positions beyond the
        exactly-tested prefix; they must form runs at the ends of the range (else: dense)."""
        n = wide.shape[0]
        top_run = wide.flip(1).long().cumprod(1).sum(1)
        bot_run = wide.long().cumprod(1).sum(1)
        dense = wide.sum(1) > top_run + bot_run
        w = torch.ldexp(torch.ones(n, device=wide.device), (self.hist.exp - 3).to(torch.int32))  # band width
        half = N_BANDS // 2
        edge_hi = (half - top_run).float() * w  # lower edge of the top run
        edge_lo = (bot_run - half).float() * w  # upper edge of the bottom run (right-closed: included)
        inf = torch.tensor(float("inf"), device=wide.device)
        hi = torch.where(top_run > 0, edge_hi, inf)
        lo = torch.where(bot_run > 0, torch.nextafter(edge_lo, inf), -inf)
        hi = torch.minimum(torch.minimum(hi, self.vmax), torch.nextafter(self.top.kth(), -inf))
        lo = torch.maximum(lo, self.vmin)
        dense |= ~(lo < hi)  # nothing left to skip (also: first batch, top-k not full yet)
        return lo, hi, dense

    def _dense_bands(self, bins: Tensor, units: Tensor, cnt: Tensor):
        """Band candidates of dense units: per (unit, band), the batch's first r rows (lowest (priority,
        key)) with row < cnt. Returns (rows, units, groups)."""
        M, d = bins.shape[0], len(units)
        b = bins if d == self.n else bins.index_select(1, units)  # (all units: the first batch)
        col = (b // self.n >> BAND_SHIFT).t().contiguous()  # [d, M] int32 band column
        cnt_d = cnt.view(-1, N_BANDS)[units]  # [d, N_BANDS]
        if bool((cnt_d < M).any()):  # some bands only take the first cnt rows
            col.masked_fill_(cnt_d.gather(1, col.long()) <= torch.arange(M, device=col.device, dtype=torch.int32), N_BANDS)
        s, si = torch.sort(col.to(torch.int16), dim=1, stable=True)
        # rank within a (unit, band) run = position - where the run starts (from per-row band counts)
        per = torch.zeros(d, N_BANDS + 1, dtype=torch.long, device=col.device)
        per.scatter_add_(1, col.long(), torch.ones(1, 1, dtype=torch.long, device=col.device).expand(d, M))
        start = per.cumsum(1) - per  # [d, N_BANDS + 1] first position of each band in the sorted row
        s = s.long()
        rank = torch.arange(M, device=col.device)[None] - start.gather(1, s)
        i, j = ((rank < self.bands.r) & (s < N_BANDS)).nonzero(as_tuple=True)
        rows = si[i, j]
        return rows, units[i], units[i] * N_BANDS + s[i, j]

    # work buffers: reused across batches (fresh multi-MB tensors cost page faults on every batch)
    def _buf(self, name: str, numel: int, dtype, device) -> Tensor:
        bufs = self.__dict__.setdefault("_bufs", {})
        b = bufs.get(name)
        if b is None or b.numel() < numel or b.dtype != dtype or b.device != torch.device(device):
            b = bufs[name] = torch.empty(numel, dtype=dtype, device=device)
        return b[:numel]

    def _gather(self, flat: Tensor, idx: Tensor) -> Tensor:
        M, n = len(idx), flat.shape[1]
        out = self._buf("x", M * n, torch.float32, flat.device).view(M, n)
        if flat.dtype == torch.float32:
            return torch.index_select(flat, 0, idx, out=out)
        return out.copy_(flat.index_select(0, idx))

    def _bins(self, x: Tensor) -> Tensor:
        """Bin columns of x [M, n] (units along columns) as a bin-major flat index column * n + unit
        (int32, in a work buffer): neighbouring units of a row count into neighbouring cells, which
        keeps the bincount cache-friendly. Same bins as histogram.bin_index."""
        M, n = x.shape
        scale = torch.ldexp(torch.ones(n, device=x.device), (HALF.bit_length() - 1 - self.hist.exp).to(torch.int32))
        y = torch.mul(x, scale, out=self._buf("y", M * n, torch.float32, x.device).view(M, n))
        y.ceil_()
        out = self._buf("bins", M * n, torch.int32, x.device).view(M, n)
        out.copy_(y)
        base = torch.arange(n, device=x.device, dtype=torch.int32) + (HALF - 1) * n
        return torch.add(base, out, alpha=n, out=out)

    def _band_groups(self, bins: Tensor, units: Tensor) -> Tensor:
        """Band group unit * N_BANDS + band column of bin-major flat bins of the given units (int64)."""
        return (bins.long() // self.n >> BAND_SHIFT) + units * N_BANDS

    def _sums(self, x: Tensor, tok: Tensor) -> None:
        """Exact sums of round(x*Q): s1, s2 and per token. tok: [M] token id of each row.

        round(x*Q) are integers; per-token sums of a batch are done in float32 when they provably stay
        below 2**24 (exact), else in float64."""
        M, n = x.shape
        xq = torch.mul(x, Q, out=self._buf("y", M * n, torch.float32, x.device).view(M, n))
        xq.round_()
        uniq, inv = torch.unique(tok, return_inverse=True)
        counts = torch.bincount(inv, minlength=len(uniq))
        bound = (float(torch.maximum(self.vmax.abs(), self.vmin.abs()).max()) * Q + 1) * int(counts.max())
        if bound < 2 ** 24:
            per_tok = torch.zeros(len(uniq), n, device=x.device).index_add_(0, inv, xq).double()
        else:
            per_tok = torch.zeros(len(uniq), n, dtype=torch.float64, device=x.device).index_add_(0, inv, xq.double())
        self.s1 += per_tok.sum(0)
        rows = self._rows_for(uniq)
        self.tok_rows.index_add_(0, rows, per_tok)  # rows are distinct: same sums, no gather/scatter copy
        self.tok_count.index_add_(0, rows, counts)
        x2 = self._buf("xq2", M * n, torch.float64, x.device).view(M, n).copy_(xq)
        x2.mul_(x2)
        self.s2 += torch.ones(M, dtype=torch.float64, device=x.device) @ x2

    def _fetch(self, flat: Tensor, ctx: BatchContext, u: Tensor, col: Tensor):
        """Windows of examples (unit u [s], counted-position index col [s]): tokens, values, extra."""
        focus = ctx.rows[col]
        where = b, tj, ok = ctx.window_positions(focus)
        T = ctx.tokens.shape[1]
        n = flat.shape[1]
        idx = ((b[:, None] * T + tj) * n + u[:, None]).reshape(-1)  # one flat gather: fast
        val = flat.reshape(-1).index_select(0, idx).view(tj.shape).float().masked_fill_(~ok, float("nan"))
        return ctx.window_tokens(focus, where), val, torch.zeros_like(u)

    def _rows_for(self, ids: Tensor) -> Tensor:
        """Rows of the per-token table for token ids [u], adding rows for tokens seen the first time.
        The table grows by doubling its capacity (tok_rows is a view of the first rows)."""
        rows = self._row_of[ids]
        new = ids[rows < 0]
        if len(new):
            start, end = len(self.tok_ids), len(self.tok_ids) + len(new)
            self._row_of[new] = torch.arange(start, end, device=ids.device)
            self.tok_ids = torch.cat([self.tok_ids, new])
            self.tok_count = torch.cat([self.tok_count, torch.zeros_like(new)])
            cap = self.__dict__.get("_tok_cap")
            if cap is None or cap.shape[0] < end:
                # unused capacity stays untouched (no page is faulted in before its rows are used)
                cap = self.tok_rows.new_empty(max(end, 2 * start, 256), self.n)
                cap[:start] = self.tok_rows
                self._tok_cap = cap
            cap[start:end] = 0
            self.tok_rows = cap[:end]
            rows = self._row_of[ids]
        return rows

    # ------------------------------------------------------------------ merge / state
    def merge(self, other: "NeuronAccumulator") -> None:
        self.count += other.count
        self.s1 += other.s1
        self.s2 += other.s2
        self.vmax = torch.maximum(self.vmax, other.vmax)
        self.vmin = torch.minimum(self.vmin, other.vmin)
        target = torch.maximum(self.hist.exp, other.hist.exp)
        self.bands.raise_level(self.hist.raise_level(target))
        other.bands.raise_level(other.hist.raise_level(target))
        self.hist.counts += other.hist.counts
        self.top.merge(other.top)
        self.bands.merge(other.bands)
        if len(other.tok_ids):
            rows = self._rows_for(other.tok_ids)
            self.tok_rows.index_put_((rows,), other.tok_rows, accumulate=True)
            self.tok_count.index_put_((rows,), other.tok_count, accumulate=True)

    def state(self) -> dict:
        return {"count": self.count, "s1": self.s1, "s2": self.s2, "vmax": self.vmax, "vmin": self.vmin,
                "hist": self.hist.state(), "top": self.top.state(), "bands": self.bands.state(),
                "tok_ids": self.tok_ids, "tok_rows": self.tok_rows.clone(), "tok_count": self.tok_count,
                "d_vocab": self.d_vocab}

    @classmethod
    def from_state(cls, st: dict) -> "NeuronAccumulator":
        a = cls.__new__(cls)
        a.count, a.s1, a.s2, a.vmax, a.vmin = st["count"], st["s1"], st["s2"], st["vmax"], st["vmin"]
        a.n, a.d_vocab = a.s1.shape[0], st["d_vocab"]
        a.hist = PowerHistogram.from_state(st["hist"])
        a.top = TopK.from_state(st["top"])
        a.bands = BandReservoir.from_state(st["bands"])
        a.tok_ids, a.tok_rows, a.tok_count = st["tok_ids"], st["tok_rows"], st["tok_count"]
        a._row_of = torch.full((a.d_vocab,), -1, dtype=torch.long, device=a.s1.device)
        a._row_of[a.tok_ids] = torch.arange(len(a.tok_ids), device=a.s1.device)
        return a

    # ------------------------------------------------------------------ results
    def mean_std(self) -> tuple[Tensor, Tensor]:
        """[n] mean and standard deviation (float64)."""
        c = max(self.count, 1)
        mean = self.s1 / Q / c
        var = (self.s2 / (Q * Q) / c - mean * mean).clamp_min(0)
        return mean, var.sqrt()

    def fire_count(self) -> Tensor:
        """[n] how many values were > 0."""
        return self.hist.counts[:, self.hist.counts.shape[1] // 2:].sum(1)

    def token_means(self, k: int, min_count: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per neuron, the k token ids with the largest mean activation among tokens seen >= min_count
        times: (ids [n, k'], means [n, k'] float64, counts [n, k']), ties broken by smaller token id."""
        ok = self.tok_count >= min_count
        if not bool(ok.any()):
            z = torch.zeros(self.n, 0)
            return z.long(), z.double(), z.long()
        ids, cnt = self.tok_ids[ok], self.tok_count[ok]
        by_id = ids.argsort()
        ids, cnt = ids[by_id], cnt[by_id]
        means = (self.tok_rows[ok][by_id] / Q / cnt[:, None]).t()  # [n, v]
        kk = min(k, len(ids))
        v, cols = topk_rows(means, kk)
        return ids[cols], v, cnt[cols]
