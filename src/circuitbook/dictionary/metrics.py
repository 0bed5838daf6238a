"""Reconstruction metrics of a dictionary on (x, y) activation rows, accumulated batch by batch.

    L0                 mean number of active features per token
    FVU                sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over all tokens (mean over the same tokens)
    density[i]         fraction of tokens on which feature i is active (> 0)
    dead fraction      features with density 0 on the measured tokens
    dense fraction     features with density > ``DENSE`` (0.1: active on more than one token in ten)
    histogram          counts of log10(density) over ``HIST_BINS`` equal bins on [HIST_LO, 0] (dead features
                       are not in it: they are the dead fraction)
Sums are float64, so the figures do not depend on how the tokens were batched.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

DENSE = 0.1
HIST_LO, HIST_BINS = -7.0, 35


@dataclasses.dataclass
class Reconstruction:
    """The figures above for ``n_tokens`` tokens; ``density`` [d_sae] float64, ``hist`` [(lo, hi, count)]."""

    n_tokens: int
    l0: float
    fvu: float
    dead_fraction: float
    dense_fraction: float
    density: Tensor
    hist: list[tuple[float, float, int]]

    def to_dict(self) -> dict:
        return {"n_tokens": self.n_tokens, "l0": self.l0, "fvu": self.fvu, "dead_fraction": self.dead_fraction,
                "dense_fraction": self.dense_fraction}


def density_histogram(density: Tensor, lo: float = HIST_LO, bins: int = HIST_BINS) -> list[tuple[float, float, int]]:
    """(lo, hi, count) of log10(density) for the live features (density > 0), values below ``lo`` in bin 0."""
    live = density[density > 0].double().log10().clamp(lo, 0.0)
    counts = torch.histc(live.float(), bins=bins, min=lo, max=0.0) if len(live) else torch.zeros(bins)
    w = -lo / bins
    return [(lo + i * w, lo + (i + 1) * w, int(c)) for i, c in enumerate(counts.tolist())]


class ReconstructionMeter:
    """Add (f, y, y_hat) batches; :meth:`result` gives a :class:`Reconstruction`."""

    def __init__(self, d_sae: int):
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.n = 0
        self.l0 = 0.0
        self.sse = 0.0
        self.sum_y = None
        self.sum_y2 = 0.0

    def add(self, f: Tensor, y: Tensor, y_hat: Tensor) -> None:
        active = f > 0
        self.fires += active.sum(0).double().cpu()
        self.n += len(y)
        self.l0 += float(active.sum())
        yd = y.double()
        self.sse += float((yd - y_hat.double()).pow(2).sum())
        s = yd.sum(0).cpu()
        self.sum_y = s if self.sum_y is None else self.sum_y + s
        self.sum_y2 += float(yd.pow(2).sum())

    def result(self) -> Reconstruction:
        n = max(self.n, 1)
        total_var = self.sum_y2 - float(self.sum_y.pow(2).sum()) / n if self.sum_y is not None else 0.0
        density = self.fires / n
        return Reconstruction(
            n_tokens=self.n, l0=self.l0 / n, fvu=self.sse / total_var if total_var > 0 else math.nan,
            dead_fraction=float((density == 0).double().mean()), dense_fraction=float((density > DENSE).double().mean()),
            density=density, hist=density_histogram(density))
