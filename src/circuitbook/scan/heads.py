"""Everything the scan records about the attention heads of one layer, one batch at a time.

Per query position (BOS and padding excluded as queries, see context.py), from the pattern row
p[k] (k <= q):
    bos      p[0]                      attention to the BOS / story separator (the usual sink)
    self     p[q]
    prev     p[q-1]
    dist     sum_k p[k] * (q - k)      mean attention distance, in tokens
    entropy  -sum_k p[k] ln p[k]       nats
Means of these are exact, order-independent sums on the 2**-12 grid (as in neurons.py). Each query's
values are computed from its own sequence's block of the pattern (keys 0..q, no padding), so they do not
depend on the batch's padded length either.

Top examples: the queries with the strongest attention to a real token (max over k >= 1 of p[k]),
with the query's attention row over the context window and, in ``extra``, the distance q - k* to the
key it attends most.

Token pairs: attention mass summed per (query token, key token) over every weight >= ``pair_min``
with k >= 1 (the BOS sink would swamp everything else). The table grows with the number of distinct
pairs, not with the corpus.

State (h = n_heads): count (queries), sums [h, 5] float64, top (TopK), pair_ids [p] int64 sorted
(id = (head * d_vocab + query token) * d_vocab + key token), pair_mass [p] float64 (sum of
round(w*Q)), pair_count [p] int64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .context import BatchContext
from .neurons import Q, use_kernels
from .mergeable_topk import TopK, topk_rows

STATS = ("bos", "self", "prev", "dist", "entropy")


class HeadAccumulator:
    kernels = "auto"  # "auto" | "numba" | "torch" (neurons.use_kernels); statistics agree to float32 precision
    pair_cap = 16  # fused path: pair weights listed per query row in the first pass (a row has <= 1/pair_min)

    def __init__(self, n_heads: int, k: int, width: int, d_vocab: int, pair_min: float = 0.1, device="cpu"):
        self.n, self.d_vocab, self.pair_min = n_heads, d_vocab, pair_min
        self.count = 0
        self.sums = torch.zeros(n_heads, len(STATS), dtype=torch.float64, device=device)
        self.top = TopK(n_heads, k, width, device)
        self.pair_ids = torch.zeros(0, dtype=torch.long, device=device)
        self.pair_mass = torch.zeros(0, dtype=torch.float64, device=device)
        self.pair_count = torch.zeros(0, dtype=torch.long, device=device)
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []

    def update(self, pattern: Tensor, ctx: BatchContext) -> None:
        """pattern: [B, n_heads, q_pos, k_pos] the layer's ``attn.hook_pattern`` for the batch.

        Works one sequence at a time on its own [H, L-1, L] block (counted queries 1..L-1, keys 0..L-1):
        padding and the keys after a sequence's end are never touched, and every statistic of a query
        depends only on its sequence. The strongest attention (max over keys >= 1) is only needed
        where it can enter the top-k: once a head's k-th best is >= pair_min, it comes from the pair
        entries (weights >= pair_min) found anyway."""
        B, H, T, _ = pattern.shape
        if len(ctx.rows) == 0:
            return
        dev = pattern.device
        kth = self.top.kth()
        if use_kernels(self.kernels, pattern):
            stats, pairs = self._stats_fused(pattern, ctx)
        else:
            stats, pairs = self._stats_torch(pattern, ctx, bool((kth >= self.pair_min).all()))
        self.count += stats.shape[1]
        self.sums += (stats[..., :5] * Q).round_().double().sum(1)

        vals, cols = topk_rows(stats[..., 5].float(), self.top.k)
        ok = vals >= kth[:, None]
        if not bool(ok.all()):  # keep only what can enter (-inf rows of the sparse max never do)
            hh, jj = ok.nonzero(as_tuple=True)
        else:
            hh = torch.arange(H, device=dev)[:, None].expand_as(cols).reshape(-1)
            jj = torch.arange(cols.shape[1], device=dev).repeat(H)
        cand = cols[hh, jj]

        def fetch(j):
            h, c = hh[j], cand[j]
            focus = ctx.rows[c]
            where = b, tj, ok = ctx.window_positions(focus)
            t = focus % T
            val = pattern[b[:, None], h[:, None], t[:, None], tj].float()
            val = val.masked_fill_(~ok | (tj > t[:, None]), float("nan"))
            return ctx.window_tokens(focus, where), val, t - stats[h, c, 6].long()
        self.top.offer(hh, vals[hh, jj], ctx.keys[cand], fetch)

        # (query token -> key token) attention mass over weights >= pair_min, BOS key excluded
        V = self.d_vocab
        b, h, q, k, w = pairs
        tf = ctx.tokens.reshape(-1)  # 1-d index_select: much faster than 2-d advanced indexing
        ids = (h * V + tf.index_select(0, b * T + q)) * V + tf.index_select(0, b * T + k)
        mass = (w * Q).round_().double()
        self._pending.append((ids, mass, torch.ones_like(ids)))  # reduced in _compact
        if sum(len(p[0]) for p in self._pending) > 4_000_000:
            self._compact()

    def _stats_torch(self, pattern: Tensor, ctx: BatchContext, sparse_max: bool):
        """(stats [H, M, 7] float32 in corpus order, pairs (b, h, q, k, w)) one sequence at a time."""
        B, H, T, _ = pattern.shape
        ar = torch.arange(T, device=pattern.device, dtype=torch.float32)
        stats, pair_parts = [], []
        for b, L in enumerate(ctx.lengths.tolist()):
            if L < 2:
                continue
            st = torch.empty(H, L - 1, 7, device=pattern.device)  # row = query - 1
            # causal: rows [r0, r1) only see keys [0, r1]; two row blocks skip a quarter of the zeros
            cuts = [0, (L - 1) // 2, L - 1] if L >= 64 else [0, L - 1]
            for r0, r1 in zip(cuts[:-1], cuts[1:]):
                P = pattern[b, :, 1 + r0:1 + r1, :r1 + 1].float()  # [H, rows, keys]
                self._block_stats(P, r0, ar, st[:, r0:r1], sparse_max, pair_parts, b)
            stats.append(st)
        pairs = (torch.cat([torch.full_like(p[1], p[0]) for p in pair_parts]),
                 *(torch.cat([p[i] for p in pair_parts]) for i in range(1, 5)))
        return torch.cat(stats, 1), pairs

    def _stats_fused(self, pattern: Tensor, ctx: BatchContext):
        """_stats_torch with the compiled kernels: every pattern row read once for the statistics and
        once for the pair weights. Statistics in float64 (see kernels.py)."""
        from . import kernels as K

        with K.LOCK:
            return self._stats_fused_locked(pattern, ctx, K)

    def _stats_fused_locked(self, pattern: Tensor, ctx: BatchContext, K):
        K.threads(torch.get_num_threads())
        B, H, T, _ = pattern.shape
        P = pattern.float().contiguous().numpy()
        L = ctx.lengths.to(torch.int64)
        per = (L - 1).clamp_min(0)
        offsets = per.cumsum(0) - per
        M = len(ctx.rows)
        stats = np.empty((H, M, 7))
        n_pairs = np.empty((H, M), dtype=np.int64)
        cap = min(T, self.pair_cap)
        pk, pw = np.empty((H, M, cap), dtype=np.int32), np.empty((H, M, cap), dtype=np.float32)
        K.head_stats(P, L.numpy(), offsets.numpy(), self.pair_min, stats, n_pairs, pk, pw)
        if n_pairs.max(initial=0) <= cap:
            cnt = n_pairs.reshape(-1)
            hi = np.repeat(np.arange(H * M), cnt)  # flat (head, row) of every pair, then its slot j
            j = np.arange(len(hi)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            flat = hi * cap + j
            h, i = torch.from_numpy(hi // M), torch.from_numpy(hi % M)
            k = torch.from_numpy(pk.reshape(-1)[flat]).long()
            w = torch.from_numpy(pw.reshape(-1)[flat])
            focus = ctx.rows[i]
            q = focus % T
            pairs = (focus // T, h, q, k, w)
        else:  # a small pair_min: list them in a second pass, per (sequence, head) task
            cs = np.zeros((H, M + 1), dtype=np.int64)
            np.cumsum(n_pairs, axis=1, out=cs[:, 1:])
            o, e = offsets.numpy(), (offsets + per).numpy()
            per_task = (cs[:, e] - cs[:, o]).T.reshape(-1)  # [B * H], task b * H + h
            starts = np.concatenate([[0], np.cumsum(per_task)[:-1]]).astype(np.int64)
            total = int(per_task.sum())
            out = [np.empty(total, dtype=np.int64) for _ in range(4)] + [np.empty(total, dtype=np.float32)]
            K.head_pairs(P, L.numpy(), starts, self.pair_min, *out)
            pairs = tuple(torch.from_numpy(a) for a in out)
        return torch.from_numpy(stats), pairs

    def _block_stats(self, P: Tensor, r0: int, ar: Tensor, st: Tensor, sparse_max: bool, pair_parts: list, b: int) -> None:
        """Statistics of query rows r0.. of one sequence: P [H, rows, keys] (query q = r0 + row + 1 sees
        keys 0..q, all inside P), into st [H, rows, 7]; pair entries appended to pair_parts."""
        H, R, K = P.shape
        q = ar[r0 + 1:r0 + 1 + R]
        st[..., 0] = P[..., 0]
        st[..., 1] = P.diagonal(r0 + 1, 1, 2)
        st[..., 2] = P.diagonal(r0, 1, 2)
        st[..., 3] = q - P @ ar[:K]
        st[..., 4] = torch.special.entr(P).sum(-1)
        h, r, k = (P[..., 1:] >= self.pair_min).nonzero(as_tuple=True)
        k = k + 1
        w = P[h, r, k]
        if sparse_max:  # rows without a weight >= pair_min cannot enter the top-k: mark them -inf
            flat = h * R + r
            mx = torch.full((H * R,), float("-inf"), device=P.device).scatter_reduce_(0, flat, w, "amax")
            at = w == mx[flat]
            first = torch.full((H * R,), K, device=P.device, dtype=torch.long)
            first.scatter_reduce_(0, flat[at], k[at], "amin")  # first key at the max
            st[..., 5] = mx.view(H, R)
            st[..., 6] = first.view(H, R).float()
        else:
            mx, am = P[..., 1:].max(-1)
            st[..., 5], st[..., 6] = mx, (am + 1).float()
        pair_parts.append((b, h, r + r0 + 1, k, w))

    def _compact(self) -> None:
        if self._pending:
            parts = [(self.pair_ids, self.pair_mass, self.pair_count)] + self._pending
            self.pair_ids, self.pair_mass, self.pair_count = _reduce(*(torch.cat(x) for x in zip(*parts)))
            self._pending = []

    def merge(self, other: "HeadAccumulator") -> None:
        self.count += other.count
        self.sums += other.sums
        self.top.merge(other.top)
        other._compact()
        self._pending.append((other.pair_ids, other.pair_mass, other.pair_count))
        self._compact()

    def state(self) -> dict:
        self._compact()
        return {"count": self.count, "sums": self.sums, "top": self.top.state(), "pair_ids": self.pair_ids,
                "pair_mass": self.pair_mass, "pair_count": self.pair_count, "d_vocab": self.d_vocab,
                "pair_min": self.pair_min}

    @classmethod
    def from_state(cls, st: dict) -> "HeadAccumulator":
        a = cls.__new__(cls)
        a.count, a.sums, a.top = st["count"], st["sums"], TopK.from_state(st["top"])
        a.pair_ids, a.pair_mass, a.pair_count = st["pair_ids"], st["pair_mass"], st["pair_count"]
        a.n, a.d_vocab, a.pair_min = a.sums.shape[0], st["d_vocab"], st["pair_min"]
        a._pending = []
        return a

    # ------------------------------------------------------------------ results
    def means(self) -> Tensor:
        """[n_heads, 5] float64 mean of each of STATS over counted queries."""
        return self.sums / Q / max(self.count, 1)

    def top_pairs(self, head: int, k: int) -> list[tuple[int, int, float, int]]:
        """[(query token, key token, mass, count)] the k pairs with most attention mass (ties: smaller id)."""
        self._compact()
        V = self.d_vocab
        lo, hi = head * V * V, (head + 1) * V * V
        a, b = torch.searchsorted(self.pair_ids, torch.tensor([lo, hi], device=self.pair_ids.device)).tolist()
        if a == b:
            return []
        ids, mass, cnt = self.pair_ids[a:b], self.pair_mass[a:b], self.pair_count[a:b]
        _, cols = topk_rows(mass[None], k)
        out = []
        for c in cols[0].tolist():
            i = int(ids[c]) - lo
            out.append((i // V, i % V, float(mass[c]) / Q, int(cnt[c])))
        return out


def _reduce(ids: Tensor, mass: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sum mass and count per distinct id; ids come out sorted."""
    u, inv = torch.unique(ids, return_inverse=True)
    return (u, torch.zeros(len(u), dtype=torch.float64, device=ids.device).index_add_(0, inv, mass),
            torch.zeros(len(u), dtype=torch.long, device=ids.device).index_add_(0, inv, count))
