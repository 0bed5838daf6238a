"""Quantile-band example reservoirs: a uniform sample of examples from each activation band of each unit.

Bands are groups of 2**BAND_SHIFT histogram bins (histogram.py): with 64 bins per sign and a shift of 3,
8 bands per sign, each 1/8 of the unit's power-of-two range M: (-M, -7M/8], ..., (-M/8, 0], (0, M/8],
..., (7M/8, M]. A unit's top band is never empty and, since max > M/2, positive bands 0..3 and at least
band 4 are reachable: between 5 and 8 positive bands plus whatever negative bands the unit visits.

Sampling is bottom-r by priority: each example gets a priority from a hash of its corpus key
(:func:`priority`, shared by all units, so related units show related samples) and a band keeps the r
examples with the smallest (priority, key). That is a uniform random sample without replacement, it is
deterministic (no RNG state to save) and mergeable: the bottom r of a union is the bottom r of the
bottom r's. When a unit's level rises, band b becomes band b >> d and bands merge the same way.

    pri   [n_units, n_bands, r] int64 (slots unordered while streaming; canonicalize() sorts each band
          by (priority, key)); EMPTY_KEY in empty slots
    keys  [n_units, n_bands, r] int64 example keys (topk.example_key)
    vals  [n_units, n_bands, r] float32 the unit's value on the example
    ctx_tok [n_units, n_bands, r, width] int32, ctx_val [..., width] float32 (as in topk.TopK)

Band column c holds signed band c - n_bands // 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .histogram import HALF
from .mergeable_topk import EMPTY_KEY

BAND_SHIFT = 3
N_BANDS = 2 * HALF >> BAND_SHIFT  # 16: 8 per sign

_M63 = (1 << 63) - 1


def _lsr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _i64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def priority(keys: Tensor) -> Tensor:
    """splitmix64 of the key, as a non-negative int64 below EMPTY_KEY. Integer ops wrap in torch."""
    z = keys + _i64(0x9E3779B97F4A7C15)
    z = (z ^ _lsr(z, 30)) * _i64(0xBF58476D1CE4E5B9)
    z = (z ^ _lsr(z, 27)) * _i64(0x94D049BB133111EB)
    z = z ^ _lsr(z, 31)
    return (z & _M63).clamp_max(EMPTY_KEY - 1)


def band_range(band_col: int, exp: int) -> tuple[float, float]:
    """(lo, hi] value range of band column ``band_col`` for a unit at level ``exp``."""
    w = 2.0 ** exp / (N_BANDS // 2)
    b = band_col - N_BANDS // 2
    return b * w, (b + 1) * w


class BandReservoir:
    def __init__(self, n_units: int, r: int, width: int, device="cpu"):
        self.r, self.width = r, width
        shape = (n_units, N_BANDS, r)
        self.pri = torch.full(shape, EMPTY_KEY, dtype=torch.long, device=device)
        self.keys = torch.full(shape, EMPTY_KEY, dtype=torch.long, device=device)
        self.vals = torch.full(shape, float("nan"), device=device)
        self.ctx_tok = torch.full(shape + (width,), -1, dtype=torch.int32, device=device)
        self.ctx_val = torch.full(shape + (width,), float("nan"), device=device)

    def threshold(self) -> Tensor:
        """[n_units * N_BANDS] the largest priority a band keeps (EMPTY_KEY while it has room): an
        example can only get in with a priority <= this."""
        return self.pri.amax(-1).reshape(-1)

    def offer(self, group: Tensor, pri: Tensor, keys: Tensor, vals: Tensor, fetch) -> None:
        """Candidates: group [c] = unit * N_BANDS + band column, pri/keys [c] int64, vals [c] float.

        ``fetch(cand_idx) -> (ctx_tok [s, width], ctx_val [s, width])`` builds the windows of the
        candidates that made it in. Slots are physical: an entering example takes the slot of the one it
        evicts (empty slots first); canonicalize() sorts them."""
        if len(group) == 0:
            return
        r = self.r
        groups = torch.unique(group)
        slot = (groups[:, None] * r + torch.arange(r, device=group.device)).reshape(-1)
        e_grp = torch.cat([groups.repeat_interleave(r), group])
        e_pri = torch.cat([self.pri.view(-1)[slot], pri])
        e_key = torch.cat([self.keys.view(-1)[slot], keys])
        n_old = len(slot)
        o = e_key.argsort()
        o = o[torch.sort(e_pri[o], stable=True).indices]
        o = o[torch.sort(e_grp[o], stable=True).indices]
        g_sorted = e_grp[o]
        rank = torch.arange(len(o), device=o.device) - torch.searchsorted(g_sorted, g_sorted)
        kept = torch.zeros(len(o), dtype=torch.bool, device=o.device)
        kept[o[rank < r]] = True
        ev = (~kept[:n_old]).nonzero()[:, 0]  # old slots losing their entry (grouped, in group order)
        en = kept[n_old:].nonzero()[:, 0]  # entering candidates
        if len(en) == 0:
            return
        en = en[torch.sort(group[en], stable=True).indices]  # group order, like ev: same count per group
        dest = slot[ev]
        tok, val = fetch(en)
        self.pri.view(-1)[dest] = pri[en]
        self.keys.view(-1)[dest] = keys[en]
        self.vals.view(-1)[dest] = vals[en].float()
        self.ctx_tok.view(-1, self.width)[dest] = tok
        self.ctx_val.view(-1, self.width)[dest] = val

    def canonicalize(self) -> "BandReservoir":
        """Sort each band's slots by (priority, key), empty slots last."""
        n, nb, r = self.pri.shape
        p, k = self.pri.view(-1, r), self.keys.view(-1, r)
        o = k.argsort(1)
        o = o.gather(1, torch.sort(p.gather(1, o), dim=1, stable=True).indices)
        for name in ("pri", "keys", "vals"):
            setattr(self, name, getattr(self, name).view(-1, r).gather(1, o).view(n, nb, r))
        idx = o[..., None].expand(-1, -1, self.width)
        self.ctx_tok = self.ctx_tok.view(-1, r, self.width).gather(1, idx).view(n, nb, r, self.width)
        self.ctx_val = self.ctx_val.view(-1, r, self.width).gather(1, idx).view(n, nb, r, self.width)
        return self

    def raise_level(self, shift: Tensor) -> None:
        """Units whose level rose by shift[u] > 0: band b -> b >> shift, merging bands."""
        units = shift.nonzero()[:, 0]
        if len(units):  # empty reservoirs (the first batch) have nothing to re-label
            units = units[(self.keys[units] != EMPTY_KEY).flatten(1).any(1)]
        if len(units) == 0:
            return
        nb, half = N_BANDS, N_BANDS // 2
        groups = (units[:, None] * nb + torch.arange(nb, device=units.device)).reshape(-1)
        col = torch.arange(nb, device=units.device) - half
        new_col = (col[None, :] >> shift[units, None]) + half  # [units, nb]
        # existing entries are re-labelled to their new group; no candidates
        relabel = (units[:, None] * nb + new_col).reshape(-1)
        self._rebuild(groups, relabel, None, None, None, None, None)

    def _rebuild(self, groups, old_group_of, group, pri, keys, vals, fetch) -> None:
        """Rewrite bands ``groups`` [g] with the best r of: their current entries (entry slots of
        ``groups[i]`` move to group ``old_group_of[i]``) plus the candidates (if any)."""
        r, W = self.r, self.width
        flat_pri = self.pri.view(-1, r)
        slot = (groups[:, None] * r + torch.arange(r, device=groups.device)).reshape(-1)  # old flat slots
        e_grp = old_group_of.repeat_interleave(r)
        e_pri, e_key, e_val = flat_pri.reshape(-1)[slot], self.keys.reshape(-1)[slot], self.vals.reshape(-1)[slot]
        e_src = slot  # >= 0: an old slot
        if group is not None:
            e_grp = torch.cat([e_grp, group])
            e_pri = torch.cat([e_pri, pri])
            e_key = torch.cat([e_key, keys])
            e_val = torch.cat([e_val, vals.float()])
            e_src = torch.cat([e_src, -1 - torch.arange(len(group), device=group.device)])
        # lexicographic sort by (group, priority, key): stable sorts from the last criterion to the first
        o = e_key.argsort()
        o = o[torch.sort(e_pri[o], stable=True).indices]
        o = o[torch.sort(e_grp[o], stable=True).indices]
        g_sorted = e_grp[o]
        rank = torch.arange(len(o), device=o.device) - torch.searchsorted(g_sorted, g_sorted)
        keep = o[rank < r]
        dest = e_grp[keep] * r + rank[rank < r]  # new flat slot
        # gather everything before writing (old slots may be overwritten)
        src = e_src[keep]
        old = src >= 0
        tok = torch.empty((len(keep), W), dtype=torch.int32, device=o.device)
        val = torch.empty((len(keep), W), device=o.device)
        ct, cv = self.ctx_tok.view(-1, W), self.ctx_val.view(-1, W)
        tok[old], val[old] = ct[src[old]], cv[src[old]]
        if (~old).any():
            t2, v2 = fetch(-1 - src[~old])
            tok[~old], val[~old] = t2, v2
        k_pri, k_key, k_val = e_pri[keep], e_key[keep], e_val[keep]
        # clear the rewritten bands, then place the kept entries
        self.pri.view(-1)[slot] = EMPTY_KEY
        self.keys.view(-1)[slot] = EMPTY_KEY
        self.vals.view(-1)[slot] = float("nan")
        ct[slot] = -1
        cv[slot] = float("nan")
        self.pri.view(-1)[dest] = k_pri
        self.keys.view(-1)[dest] = k_key
        self.vals.view(-1)[dest] = k_val
        ct[dest] = tok
        cv[dest] = val

    def merge(self, other: "BandReservoir") -> None:
        """Fold in another reservoir over the same units at the same levels (raise both first)."""
        live = other.keys.view(-1) != EMPTY_KEY
        idx = live.nonzero()[:, 0]
        group = idx // other.r
        W = self.width

        def fetch(j):
            return other.ctx_tok.view(-1, W)[idx[j]], other.ctx_val.view(-1, W)[idx[j]]
        self.offer(group, other.pri.view(-1)[idx], other.keys.view(-1)[idx], other.vals.view(-1)[idx], fetch)

    def state(self) -> dict:
        self.canonicalize()
        return {"pri": self.pri, "keys": self.keys, "vals": self.vals, "ctx_tok": self.ctx_tok, "ctx_val": self.ctx_val}

    @classmethod
    def from_state(cls, st: dict) -> "BandReservoir":
        b = cls.__new__(cls)
        b.pri, b.keys, b.vals, b.ctx_tok, b.ctx_val = st["pri"], st["keys"], st["vals"], st["ctx_tok"], st["ctx_val"]
        b.r, b.width = b.pri.shape[2], b.ctx_tok.shape[3]
        return b
