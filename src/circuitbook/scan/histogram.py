"""Per-unit activation histograms on a power-of-two grid: exact, streaming and mergeable.

Unit u has a level ``exp[u]``: M = 2**exp is the smallest power of two strictly above every |value| seen.
Its ``2 * HALF`` bins split (-M, M] into intervals of width w = M / HALF, left-open and right-closed:
signed bin b (stored at column b + HALF) holds values in (b*w, (b+1)*w]. So columns >= HALF hold exactly
the values > 0 (the firing count comes for free) and a value of 0 falls in the bin just below.

When a larger value arrives the level rises by d and each new bin is the union of 2**d old bins
(b -> b >> d), so counts re-bin exactly: the final histogram depends only on the multiset of values, not
on batches, shards or merge order. Quantile bands (reservoir.py) are groups of 2**BAND_SHIFT bins.

    exp    [n_units] int64
    counts [n_units, 2 * HALF] int64
"""

from __future__ import annotations

import torch
from torch import Tensor

HALF = 64  # bins per sign
EXP_MIN = -24  # coarsest-resolution floor: M >= 2**-24 even for a unit that never leaves 0


def level(absmax: Tensor) -> Tensor:
    """Smallest e with 2**e > absmax (elementwise), at least EXP_MIN. absmax: [n] float."""
    tiny = 2.0 ** (EXP_MIN - 1)
    e = torch.frexp(absmax.float().clamp_min(tiny)).exponent.long()  # absmax = m * 2**e, m in [0.5, 1)
    return e.clamp_min(EXP_MIN)


def bin_index(x: Tensor, exp: Tensor) -> Tensor:
    """Flat bin index u * 2*HALF + (b + HALF) of every value (int32). x: [n_units, m] float32 with |x| < 2**exp[u].

    Multiplying by a power of two is exact in float, so the same value always lands in the same bin."""
    n = x.shape[0]
    scale = torch.ldexp(torch.ones(n, 1, device=x.device), (HALF.bit_length() - 1 - exp)[:, None].to(torch.int32))
    y = x.float() * scale
    y.ceil_()
    base = (torch.arange(n, device=x.device, dtype=torch.float32) * (2 * HALF) + (HALF - 1))[:, None]
    y += base  # exact: integers below 2**24 for up to 131k units
    return y.to(torch.int32)


class PowerHistogram:
    def __init__(self, n_units: int, device="cpu"):
        self.exp = torch.full((n_units,), EXP_MIN, dtype=torch.long, device=device)
        self.counts = torch.zeros((n_units, 2 * HALF), dtype=torch.long, device=device)

    def raise_level(self, new_exp: Tensor) -> Tensor:
        """Raise levels to ``new_exp`` where higher, re-binning counts. Returns the shift per unit [n]."""
        shift = (new_exp - self.exp).clamp_min(0)
        rows = shift.nonzero()[:, 0]
        if len(rows):
            b = torch.arange(-HALF, HALF, device=shift.device)
            dest = (b[None, :] >> shift[rows, None]) + HALF  # arithmetic shift = floor for negatives
            self.counts[rows] = torch.zeros_like(self.counts[rows]).scatter_add_(1, dest, self.counts[rows])
            self.exp = torch.maximum(self.exp, new_exp)
        return shift

    def add(self, flat_index: Tensor) -> None:
        self.counts += torch.bincount(flat_index.reshape(-1), minlength=self.counts.numel()).view_as(self.counts)

    def merge(self, other: "PowerHistogram") -> None:
        self.raise_level(other.exp)
        o = PowerHistogram.from_state(other.state())
        o.counts = o.counts.clone()
        o.raise_level(self.exp)
        self.counts += o.counts

    def edges(self, u: int) -> list[float]:
        """[2*HALF + 1] bin edges of unit u, ascending."""
        w = 2.0 ** int(self.exp[u]) / HALF
        return [b * w for b in range(-HALF, HALF + 1)]

    def state(self) -> dict:
        return {"exp": self.exp, "counts": self.counts}

    @classmethod
    def from_state(cls, st: dict) -> "PowerHistogram":
        h = cls.__new__(cls)
        h.exp, h.counts = st["exp"], st["counts"]
        return h


def edges_for(exp: int) -> list[float]:
    """Bin edges [2*HALF + 1] of a unit at level ``exp``."""
    w = 2.0 ** exp / HALF
    return [b * w for b in range(-HALF, HALF + 1)]
