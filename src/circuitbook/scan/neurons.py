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

import torch
from torch import Tensor

from .context import BatchContext
from .histogram import PowerHistogram, bin_index, level
from .reservoir import BAND_SHIFT, N_BANDS, BandReservoir, priority
from .topk import EMPTY_KEY, TopK, topk_rows

Q = 4096.0


class NeuronAccumulator:
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
        """acts: [B, T, n] the layer's ``mlp.hook_post`` for the batch described by ``ctx``."""
        B, T, n = acts.shape
        flat = acts.reshape(B * T, n)
        x = flat[ctx.rows].float().t().contiguous()  # [n, M] counted positions, corpus order
        M = x.shape[1]
        if M == 0:
            return
        self.count += M

        # extremes and histogram level (the level must cover the batch before binning it)
        bmax, bmin = x.amax(1), x.amin(1)
        self.vmax = torch.maximum(self.vmax, bmax)
        self.vmin = torch.minimum(self.vmin, bmin)
        shift = self.hist.raise_level(level(torch.maximum(self.vmax.abs(), self.vmin.abs())))
        self.bands.raise_level(shift)
        bins = bin_index(x, self.hist.exp)  # [n, M] flat bin index
        self.hist.add(bins)

        # exact sums on the 2**-12 grid; per-token sums share the rounding
        xq = (x * Q).round_().double()
        tok = ctx.tokens.reshape(-1)[ctx.rows]
        uniq, inv = torch.unique(tok, return_inverse=True)
        per_tok = torch.zeros(n, len(uniq), dtype=torch.float64, device=x.device).index_add_(1, inv, xq)
        self.s1 += per_tok.sum(1)
        self.s2 += torch.linalg.vecdot(xq, xq, dim=1)
        del xq
        rows = self._rows_for(uniq)
        self.tok_rows.index_put_((rows,), per_tok.t(), accumulate=True)
        self.tok_count.index_put_((rows,), torch.bincount(inv, minlength=len(uniq)), accumulate=True)

        # top-k
        vals, cols = topk_rows(x, self.top.k)
        self.top.update(vals, ctx.keys[cols], lambda u, j: self._fetch(flat, ctx, u, cols[u, j]))

        # band reservoirs: a candidate must beat its band's current threshold
        self._offer_bands(x, bins, ctx, flat)

    def _offer_bands(self, x: Tensor, bins: Tensor, ctx: BatchContext, flat: Tensor) -> None:
        """bins [n, M] flat histogram bins (unit * 2*HALF + column); band = bins >> BAND_SHIFT. The exact test (priority <= the band's threshold)
        needs a table lookup per value; a cheap superset goes first: priority <= the largest threshold of
        the unit's full bands, or a band in the runs of still-open bands at either end of the range
        (rare values). Units with an open band elsewhere (the first batches) take everything."""
        n = x.shape[0]
        thr = self.bands.threshold()
        t2 = thr.view(n, N_BANDS)
        open_ = t2 == EMPTY_KEY
        closed_max = torch.where(open_, -1, t2).amax(1)
        top_run = open_.flip(1).long().cumprod(1).sum(1)
        bot_run = open_.long().cumprod(1).sum(1)
        dense = open_.sum(1) > top_run + bot_run
        base = torch.arange(n, device=x.device) * N_BANDS
        top_lo = torch.where(dense, base, base + N_BANDS - top_run)
        bot_hi = torch.where(dense, base + N_BANDS, base + bot_run - 1)
        pri = priority(ctx.keys)
        maybe = (bins >= (top_lo << BAND_SHIFT)[:, None].to(bins.dtype))
        maybe |= bins < ((bot_hi + 1) << BAND_SHIFT)[:, None].to(bins.dtype)
        maybe |= pri[None, :] <= closed_max[:, None]
        u, m = maybe.nonzero(as_tuple=True)
        band = bins[u, m].long() >> BAND_SHIFT  # unit * N_BANDS + band column
        ok = thr[band] >= pri[m]
        band = band[ok]
        u, m = u[ok], m[ok]
        if len(u) > 4 * n * N_BANDS * self.bands.r:  # early batches: keep the batch's r best per band first
            cand = torch.zeros_like(maybe)
            cand[u, m] = True
            u, m = self._bottom_r((bins.long() >> BAND_SHIFT) - base[:, None], pri, ctx.keys, cand).nonzero(as_tuple=True)
            band = bins[u, m].long() >> BAND_SHIFT
        self.bands.offer(band, pri[m], ctx.keys[m], x[u, m], lambda j: self._fetch(flat, ctx, u[j], m[j])[:2])

    def _bottom_r(self, col: Tensor, pri: Tensor, keys: Tensor, cand: Tensor) -> Tensor:
        """Dense pre-filter for the first batches (every band still has room): keep, per unit and band,
        only the batch's r best (priority, key) candidates."""
        o = keys.argsort()
        o = o[torch.sort(pri[o], stable=True).indices]  # columns in (priority, key) order
        c = col[:, o].masked_fill(~cand[:, o], N_BANDS)  # non-candidates sort last
        s, si = torch.sort(c, dim=1, stable=True)
        rank = torch.arange(c.shape[1], device=c.device)[None] - torch.searchsorted(s, s)
        keep = (rank < self.bands.r) & (s < N_BANDS)
        out = torch.zeros_like(cand)
        u, j = keep.nonzero(as_tuple=True)
        out[u, o[si[u, j]]] = True
        return out

    def _fetch(self, flat: Tensor, ctx: BatchContext, u: Tensor, col: Tensor):
        """Windows of examples (unit u [s], counted-position index col [s]): tokens, values, extra."""
        focus = ctx.rows[col]
        where = b, tj, ok = ctx.window_positions(focus)
        T = ctx.tokens.shape[1]
        val = flat[b[:, None] * T + tj, u[:, None]].float().masked_fill_(~ok, float("nan"))
        return ctx.window_tokens(focus, where), val, torch.zeros_like(u)

    def _rows_for(self, ids: Tensor) -> Tensor:
        """Rows of the per-token table for token ids [u], adding rows for tokens seen the first time."""
        rows = self._row_of[ids]
        new = ids[rows < 0]
        if len(new):
            start = len(self.tok_ids)
            self._row_of[new] = torch.arange(start, start + len(new), device=ids.device)
            self.tok_ids = torch.cat([self.tok_ids, new])
            self.tok_count = torch.cat([self.tok_count, torch.zeros_like(new)])
            self.tok_rows = torch.cat([self.tok_rows, self.tok_rows.new_zeros(len(new), self.n)])
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
                "tok_ids": self.tok_ids, "tok_rows": self.tok_rows, "tok_count": self.tok_count,
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
