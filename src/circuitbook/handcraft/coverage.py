"""Explanation coverage: keep only the units labelled in the book, ablate everything else, and measure
how much of the model's loss that recovers.

    recovered(S) = (L_all_ablated - L_only_S_kept) / (L_all_ablated - L_original)

where "all ablated" removes every MLP neuron and every attention head (mean- or zero-ablation, in the
weights) and "only S kept" removes all of them except the set S. S = every labelled unit gives the
headline number ("how much of the model do we understand"); the breakdown gives the same figure for the
labelled neurons alone, the labelled heads alone, and each label alone (units sharing a label, compared
case-insensitively), always against the same all-ablated baseline, so the numbers are comparable.
The embedding / unembedding (direct path) is always kept.

**Features** (:func:`feature_coverage`, ``circuitbook coverage --features NAME``): the same figure inside one
dictionary. The MLP of the dictionary's layer is replaced by the dictionary (:mod:`.features`), every other
part of the model is kept as it is, and

    recovered(S) = (L_all_features_ablated - L_only_S_kept) / (L_all_features_ablated - L_original)

with the features outside S zero- or mean-ablated (``mode``) and the dictionary's error term kept or dropped
(``error``, default "keep", in every variant alike). S = the dictionary's labelled features (a label on unit
``feature/<dictionary number>/<idx>``). With the error kept, keeping every feature is the original model
(recovered 1); with it dropped, keeping every feature recovers what the dictionary itself does, reported as
``recovered_dictionary``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Iterable

from ..model import Model
from ..progress import progress as progress_bar
from ..units import all_units, unit_kinds
from .evaluate import mean_loss, recovered
from .features import ERROR_MODES, FeatureDictionary, ablate_features, feature_means, splice_interventions
from .splice import WEIGHT_ABLATORS, SpliceError, UnitMeans, ablate_units, unit_means


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
    """:func:`coverage` over the neurons and heads (the kinds with a weight ablator) labelled in ``book``
    (any label text); labelled features count in :func:`feature_coverage_from_book`."""
    units = [(u.kind, u.layer, u.idx, u.label) for u in book.labelled() if u.kind in WEIGHT_ABLATORS]
    return coverage(model, units, corpus_batches, mode, progress=progress, **kw)


# --------------------------------------------------------------------------- features
@dataclasses.dataclass
class FeatureCoverage:
    """The result of :func:`feature_coverage` (nats per token over ``n_tokens`` positions).

    ce_ablated: every feature ablated; ce_dictionary: every feature kept (= ce_original up to rounding when
    the error is kept); units: the kept ("feature", number, idx, label); groups as in :class:`Coverage`
    ("all labelled", then each label)."""

    mode: str
    error: str
    dictionary: str
    number: int
    layer: int
    n_features: int
    n_tokens: int
    ce_original: float
    ce_ablated: float
    ce_dictionary: float
    ce_kept: float
    recovered: float | None
    recovered_dictionary: float | None
    units: list[tuple[str, int, int, str]]
    groups: list[CoverageGroup]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        err = "kept" if self.error == "keep" else "dropped"
        lines = [f"feature coverage of dictionary {self.dictionary!r} (layer {self.layer}; {self.mode}-ablation, "
                 f"error term {err}, {self.n_tokens} tokens): keeping {len(self.units)}/{self.n_features} labelled "
                 f"features recovers {f(self.recovered)} of the loss (original {self.ce_original:.4f}, all features "
                 f"ablated {self.ce_ablated:.4f}, kept {self.ce_kept:.4f}; every feature kept "
                 f"{self.ce_dictionary:.4f}, recovered {f(self.recovered_dictionary)})"]
        for g in self.groups[1:]:
            lines.append(f"  {g.kind:5s} {g.group!r:40s} {g.n_units:4d} features  CE {g.ce_kept:.4f}  "
                         f"recovered {f(g.recovered)}")
        return "\n".join(lines)


def feature_coverage(model: Model, fd: FeatureDictionary, units: Iterable[tuple[int, str]],
                     corpus_batches: Callable[[], Iterable], mode: str = "mean", error: str = "keep",
                     means=None, per_label: bool = True, max_labels: int = 30,
                     progress: bool = False) -> FeatureCoverage:
    """Loss recovered by keeping only the features ``units`` ((idx, label)) of ``fd`` (module docstring).

    ``corpus_batches``: callable returning a fresh iterable of Batch (read once per kept set, plus once for
    the feature means in mean mode). ``means``: the features' means [n] (default: on that corpus)."""
    if error not in ERROR_MODES:
        raise SpliceError(f"the error term is kept or dropped (keep | drop), not {error!r}")
    if mode not in ("zero", "mean"):
        raise SpliceError(f"feature ablation mode must be zero or mean, not {mode!r}")
    w, n = model.weights, fd.n_features
    fd.check(w.cfg)
    units = [(fd.check_index(i), str(lab)) for i, lab in units]
    if mode == "mean" and means is None:
        means = feature_means(w, fd, corpus_batches(), progress)

    def loss_keeping(keep) -> float:
        iv = splice_interventions(w, fd, ablate_features(keep, [], n, mode, means), None, error)
        return mean_loss(w, corpus_batches(), iv)[0]

    sets: list[tuple[str, str, set]] = [("all labelled", "all", {i for i, _ in units})]
    if per_label:
        by = defaultdict(set)
        for i, lab in units:
            by[lab.strip().lower()].add(i)
        sets += [(lab, "label", s) for lab, s in sorted(by.items(), key=lambda kv: -len(kv[1]))[:max_labels]]
    ce_orig, n_tok = mean_loss(w, corpus_batches())
    ce_abl, ce_dict = loss_keeping(set()), loss_keeping(None)
    groups = []
    for name, kind, s in progress_bar(sets, desc="feature coverage", unit="set", enabled=progress):
        ce = loss_keeping(s)
        groups.append(CoverageGroup(name, kind, len(s), ce, recovered(ce_abl, ce, ce_orig)))
    head, rest = groups[0], sorted(groups[1:], key=lambda g: -(g.recovered if g.recovered is not None else -1e9))
    return FeatureCoverage(mode, error, fd.name, fd.number, fd.layer, n, n_tok, ce_orig, ce_abl, ce_dict, head.ce_kept,
                           head.recovered, recovered(ce_abl, ce_dict, ce_orig),
                           [("feature", fd.number, i, lab) for i, lab in units], [head] + rest)


def labelled_features(book, fd: FeatureDictionary) -> list[tuple[int, str]]:
    """(idx, label) of every feature of ``fd`` (its number in ``book``) that the book holds a label for."""
    return [(u.idx, u.label) for u in book.labelled("feature") if u.layer == fd.number]


def feature_coverage_from_book(book, model: Model, fd: FeatureDictionary, corpus_batches: Callable[[], Iterable],
                               mode: str = "mean", error: str = "keep", progress: bool = False,
                               **kw) -> FeatureCoverage:
    """:func:`feature_coverage` over the features of ``fd`` labelled in ``book`` (any label text)."""
    return feature_coverage(model, fd, labelled_features(book, fd), corpus_batches, mode, error,
                            progress=progress, **kw)
