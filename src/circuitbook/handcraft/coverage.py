"""Explanation coverage: keep only the units labelled in the book, ablate everything else, and measure
how much of the model's loss that recovers.

    recovered(S) = (L_all_ablated - L_only_S_kept) / (L_all_ablated - L_original)

where "all ablated" removes every MLP neuron and every attention head (mean- or zero-ablation, in the
weights) and "only S kept" removes all of them except the set S. S = every labelled unit gives the
headline number ("how much of the model do we understand"); the breakdown gives the same figure for the
labelled neurons alone, the labelled heads alone, and each label alone (units sharing a label, compared
case-insensitively), always against the same all-ablated baseline, so the numbers are comparable.
The embedding / unembedding (direct path) is always kept.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Iterable

from ..model import Model
from ..progress import progress as progress_bar
from ..units import all_units, unit_kinds
from .evaluate import mean_loss, recovered
from .splice import WEIGHT_ABLATORS, UnitMeans, ablate_units, unit_means


@dataclasses.dataclass
class CoverageGroup:
    """One kept set: ``group`` ("all labelled", "neurons", "heads" or a label), its size, CE and recovery."""

    group: str
    kind: str  # "all" | "type" | "label"
    n_units: int
    ce_kept: float
    recovered: float | None


@dataclasses.dataclass
class Coverage:
    """The result of :func:`coverage`. Losses in nats per token over ``n_tokens`` positions.

    units: the kept (kind, layer, idx, label) tuples; groups: the headline first ("all labelled"), then
    per type, then per label (largest recovery first)."""

    mode: str
    n_tokens: int
    ce_original: float
    ce_ablated: float
    ce_kept: float
    recovered: float | None
    n_neurons: int
    n_heads: int
    units: list[tuple[str, int, int, str]]
    groups: list[CoverageGroup]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        r = "n/a" if self.recovered is None else f"{self.recovered:.3f}"
        kept_n = sum(1 for u in self.units if u[0] == "neuron")
        kept_h = len(self.units) - kept_n
        lines = [f"coverage ({self.mode}-ablation, {self.n_tokens} tokens): keeping {kept_n}/{self.n_neurons} "
                 f"neurons and {kept_h}/{self.n_heads} heads recovers {r} of the loss "
                 f"(original {self.ce_original:.4f}, all ablated {self.ce_ablated:.4f}, kept {self.ce_kept:.4f})"]
        for g in self.groups[1:]:
            gr = "n/a" if g.recovered is None else f"{g.recovered:.3f}"
            lines.append(f"  {g.kind:5s} {g.group!r:40s} {g.n_units:4d} units  CE {g.ce_kept:.4f}  recovered {gr}")
        return "\n".join(lines)


def coverage(model: Model, units: Iterable[tuple[str, int, int, str]], corpus_batches: Callable[[], Iterable],
             mode: str = "mean", means: UnitMeans | None = None, per_label: bool = True, max_labels: int = 30,
             progress: bool = False) -> Coverage:
    """Loss recovered by keeping only ``units`` ((kind, layer, idx, label); a unit kind of the model with a
    weight ablator: "neuron" or "head").

    ``corpus_batches``: callable returning a fresh iterable of Batch (read once per kept set, plus once
    for the means)."""
    w = model.weights
    cfg = w.cfg
    units = [(k, int(l), int(i), str(lab)) for k, l, i, lab in units]
    kinds = [k for k in unit_kinds() if k.name in WEIGHT_ABLATORS]
    every = [u.astuple() for k in kinds for u in all_units(cfg, k.name)]
    if mode == "mean" and means is None:
        means = unit_means(w, corpus_batches(), progress)

    def loss_keeping(keep: set) -> tuple[float, int]:
        return mean_loss(ablate_units(w, [u for u in every if u not in keep], mode, means), corpus_batches())

    sets: list[tuple[str, str, set]] = [("all labelled", "all", {u[:3] for u in units})]
    sets += [(f"{k.title}s", "type", {u[:3] for u in units if u[0] == k.name}) for k in kinds]
    if per_label:
        by = defaultdict(set)
        for k, l, i, lab in units:
            by[lab.strip().lower()].add((k, l, i))
        for lab, s in sorted(by.items(), key=lambda kv: -len(kv[1]))[:max_labels]:
            sets.append((lab, "label", s))
    ce_orig, n = mean_loss(w, corpus_batches())
    ce_abl, _ = loss_keeping(set())
    groups = []
    for name, kind, s in progress_bar(sets, desc="coverage", unit="set", enabled=progress):
        if kind == "type" and not s:
            continue
        ce, _ = loss_keeping(s)
        groups.append(CoverageGroup(name, kind, len(s), ce, recovered(ce_abl, ce, ce_orig)))
    head, rest = groups[0], groups[1:]
    rest.sort(key=lambda g: (g.kind != "type", -(g.recovered if g.recovered is not None else -1e9)))
    return Coverage(mode, n, ce_orig, ce_abl, head.ce_kept, head.recovered, cfg.d_mlp * cfg.n_layers,
                    cfg.n_heads * cfg.n_layers, units, [head] + rest)


def coverage_from_book(book, model: Model, corpus_batches: Callable[[], Iterable], mode: str = "mean",
                       progress: bool = False, **kw) -> Coverage:
    """:func:`coverage` over the units labelled in ``book`` (any label text)."""
    units = [(u.kind, u.layer, u.idx, u.label) for u in book.labelled()]
    return coverage(model, units, corpus_batches, mode, progress=progress, **kw)
