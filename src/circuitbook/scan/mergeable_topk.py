"""Mergeable top-k with a total order, so every run, resume, shard and merge picks the same examples.

Order: value descending, then key ascending. A key is an example's place in the corpus
(:func:`example_key`: story index, then token offset), unique per example, so the order is total and
the k best of a corpus do not depend on how it was cut into batches or shards: ties (BOS-like repeats,
"Once upon a time" openings, ReLU zeros) always go to the earliest example.

:class:`TopK` holds, for ``n_units`` units at once (all neurons of a layer, all heads):

    vals  [n_units, k] float32   best values (slots unordered while streaming; canonicalize() sorts them
                                 by the order above); -inf in empty slots
    keys  [n_units, k] int64     example keys; EMPTY_KEY in empty slots
    extra [n_units, k] int64     one integer per example for the caller (heads: attended key distance)
    ctx_tok [n_units, k, width] int32     token ids of the context window (-1 outside the sequence)
    ctx_val [n_units, k, width] float32   the unit's value on each window token (NaN outside)

Window j of an example at sequence position p covers position p - before + j (the focus is j = before).
"""

from __future__ import annotations

import torch
from torch import Tensor

EMPTY_KEY = torch.iinfo(torch.int64).max
OFFSET_BITS = 24  # token offset within a story: up to 16M tokens per story


def example_key(story: Tensor | int, offset: Tensor | int):
    """Corpus-order key of the token at ``offset`` (0 = first story token after BOS) of ``story``."""
    return (story << OFFSET_BITS) | offset


def split_key(key: int) -> tuple[int, int]:
    """(story, offset) of a key."""
    return key >> OFFSET_BITS, key & ((1 << OFFSET_BITS) - 1)


def order(vals: Tensor, keys: Tensor) -> Tensor:
    """Indices sorting each row by (value desc, key asc). vals, keys: [rows, n]."""
    by_key = keys.argsort(dim=1)  # keys are unique within a row (EMPTY_KEY only with -inf values)
    v = vals.gather(1, by_key)
    by_val = torch.sort(v, dim=1, descending=True, stable=True).indices
    return by_key.gather(1, by_val)


def topk_rows(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best columns of each row of ``values`` [rows, n] under (value desc, column asc).

    Returns (vals [rows, k'], cols [rows, k']) sorted in that order, k' = min(k, n). Fast path:
    torch.topk with one extra value to spot rows whose k-th value ties with one left outside; those
    rows redo the choice on an exact int64 (value, -column) key."""
    n = values.shape[1]
    k = min(k, n)
    if k == 0:
        return values[:, :0], torch.zeros(values.shape[0], 0, dtype=torch.long, device=values.device)
    v, cols = values.topk(min(k + 1, n), dim=1)
    if k < n:
        rows = (v[:, k] == v[:, k - 1]).nonzero()[:, 0]
        v, cols = v[:, :k].contiguous(), cols[:, :k].contiguous()
        if len(rows) and values.dtype != torch.float32:
            c = torch.sort(values[rows], dim=1, descending=True, stable=True).indices[:, :k]
            cols[rows] = c
            v[rows] = values[rows].gather(1, c)
        elif len(rows):
            sub = _sortable(values[rows])
            col = torch.arange(n, device=values.device)
            _, c = ((sub << 32) | (n - 1 - col)[None]).topk(k, dim=1)
            cols[rows] = c
            v[rows] = values[rows].gather(1, c)
    # order within the chosen k (topk leaves equal values in arbitrary order)
    o = order(v, cols)
    return v.gather(1, o), cols.gather(1, o)


def _sortable(x: Tensor) -> Tensor:
    """int64 keys ordered like the float values (-0.0 == 0.0), in [-2**31, 2**31)."""
    i = (x + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0
    return torch.where(i < 0, i ^ 0x7FFFFFFF, i)


def merge_best(vals_a: Tensor, keys_a: Tensor, vals_b: Tensor, keys_b: Tensor, k: int):
    """Best k of two row-wise candidate sets. Returns (vals [rows, k], keys [rows, k], src [rows, k]) with
    src indexing the concatenation [a | b] (src < a.shape[1] means "kept from a")."""
    vals = torch.cat([vals_a, vals_b], 1)
    keys = torch.cat([keys_a, keys_b], 1)
    src = order(vals, keys)[:, :k]
    return vals.gather(1, src), keys.gather(1, src), src


class TopK:
    """Running top-k examples for ``n_units`` units, with their context windows (see module doc)."""

    def __init__(self, n_units: int, k: int, width: int, device="cpu"):
        self.k, self.width = k, width
        self.vals = torch.full((n_units, k), float("-inf"), device=device)
        self.keys = torch.full((n_units, k), EMPTY_KEY, dtype=torch.long, device=device)
        self.extra = torch.zeros((n_units, k), dtype=torch.long, device=device)
        self.ctx_tok = torch.full((n_units, k, width), -1, dtype=torch.int32, device=device)
        self.ctx_val = torch.full((n_units, k, width), float("nan"), device=device)

    def update(self, vals: Tensor, keys: Tensor, fetch) -> None:
        """Offer candidates vals/keys [n_units, c] (keys unique per row, not already held).

        ``fetch(units, cands) -> (ctx_tok [s, width], ctx_val [s, width], extra [s])`` builds the
        windows of the candidates that made it in (only those: after the first batches, few do). Slots
        are physical: an entering example takes the slot of the one it evicts, so nothing else moves;
        :meth:`canonicalize` sorts them."""
        k = self.k
        src = order(torch.cat([self.vals, vals], 1), torch.cat([self.keys, keys], 1))[:, :k]
        sel = torch.zeros(vals.shape[0], k + vals.shape[1], dtype=torch.bool, device=vals.device)
        sel.scatter_(1, src, True)
        er, es = (~sel[:, :k]).nonzero(as_tuple=True)  # evicted slots, row-major
        nr, nj = sel[:, k:].nonzero(as_tuple=True)  # entering candidates, row-major: same count per row
        if len(nr):
            tok, val, extra = fetch(nr, nj)
            self.vals[er, es] = vals[nr, nj]
            self.keys[er, es] = keys[nr, nj]
            self.ctx_tok[er, es] = tok
            self.ctx_val[er, es] = val
            self.extra[er, es] = extra

    def offer(self, units: Tensor, vals: Tensor, keys: Tensor, fetch) -> None:
        """Offer sparse candidates: units [c], vals [c], keys [c] (keys unique per unit, not already held).

        Same result as :meth:`update`, for a few candidates spread over many units (the usual case once
        the top-k are warm: only values beating a unit's k-th best are offered). ``fetch(cand_idx) ->
        (ctx_tok [s, width], ctx_val [s, width], extra [s])`` builds the windows of those that got in."""
        if len(units) == 0:
            return
        k = self.k
        aff = torch.unique(units)  # sorted
        slot = (aff[:, None] * k + torch.arange(k, device=units.device)).reshape(-1)  # their slots, unit order
        e_unit = torch.cat([aff.repeat_interleave(k), units])
        e_val = torch.cat([self.vals.view(-1)[slot], vals.float()])
        e_key = torch.cat([self.keys.view(-1)[slot], keys])
        # (unit asc, value desc, key asc): stable sorts from the last criterion to the first, the first two
        # as one int64 (unit, order-reversed value bits); empty slots (-inf) sort after every value
        o = e_key.argsort(stable=True)
        comp = (e_unit << 32) | ((1 << 31) - 1 - _sortable(e_val))
        o = o[torch.sort(comp[o], stable=True).indices]
        u_sorted = e_unit[o]
        rank = torch.arange(len(o), device=o.device) - torch.searchsorted(u_sorted, u_sorted)
        kept = torch.zeros(len(o), dtype=torch.bool, device=o.device)
        kept[o[rank < k]] = True
        n_old = len(slot)
        ev = (~kept[:n_old]).nonzero()[:, 0]  # evicted slots, unit order
        en = kept[n_old:].nonzero()[:, 0]  # entering candidates: as many per unit as evicted slots
        if len(en) == 0:
            return
        en = en[torch.sort(units[en], stable=True).indices]
        dest = slot[ev]
        tok, val, extra = fetch(en)
        self.vals.view(-1)[dest] = vals[en].float()
        self.keys.view(-1)[dest] = keys[en]
        self.extra.view(-1)[dest] = extra
        self.ctx_tok.view(-1, self.width)[dest] = tok
        self.ctx_val.view(-1, self.width)[dest] = val

    def kth(self) -> Tensor:
        """[n_units] the k-th best value held (-inf while a unit has room): only values >= this can enter."""
        return self.vals.amin(1)

    def canonicalize(self) -> "TopK":
        """Sort each unit's slots best first (value desc, key asc)."""
        o = order(self.vals, self.keys)
        self.vals, self.keys, self.extra = self.vals.gather(1, o), self.keys.gather(1, o), self.extra.gather(1, o)
        idx = o[..., None].expand(-1, -1, self.width)
        self.ctx_tok, self.ctx_val = self.ctx_tok.gather(1, idx), self.ctx_val.gather(1, idx)
        return self

    def merge(self, other: "TopK") -> None:
        """Fold another TopK over the same units (another shard) into this one."""
        def fetch(u, j):
            return other.ctx_tok[u, j], other.ctx_val[u, j], other.extra[u, j]
        self.update(other.vals, other.keys, fetch)

    def state(self) -> dict:
        self.canonicalize()
        return {"vals": self.vals, "keys": self.keys, "extra": self.extra,
                "ctx_tok": self.ctx_tok, "ctx_val": self.ctx_val}

    @classmethod
    def from_state(cls, st: dict) -> "TopK":
        t = cls.__new__(cls)
        t.vals, t.keys, t.extra = st["vals"], st["keys"], st["extra"]
        t.ctx_tok, t.ctx_val = st["ctx_tok"], st["ctx_val"]
        t.k, t.width = t.vals.shape[1], t.ctx_tok.shape[2]
        return t

    def filled(self) -> Tensor:
        """[n_units] how many slots hold an example."""
        return (self.keys != EMPTY_KEY).sum(1)
