"""What the explainer reads about a unit: the book's evidence, one reader per unit kind.

``EVIDENCE_READERS[kind](book, layer, idx) -> ActivationEvidence | AttentionEvidence | None`` (None: the
book has nothing on the unit). Neurons and heads are registered here; a new kind (dictionary features)
registers its own reader with :func:`register_evidence_reader` and gets explained, scored and scorecarded
like the others.

Output effects (which tokens a unit's write promotes / suppresses) come from the model's weights when a
model is given (:func:`output_effects`: the unit kind's ``write_weights`` through the final norm's gain and
the unembedding, centred over the vocabulary), else from the circuits stage's stored top tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from ..book import Book
from ..book import circuits as bc
from ..book import roles as br
from ..book import scan as bs
from ..errors import CircuitbookError
from ..units import UnitRef, unit_kind


@dataclasses.dataclass
class ActivationEvidence:
    """A one-number-per-token unit: activation stats, token means [(id, mean, count)] best first, example
    windows [(tokens [w], values [w])] (top and quantile), the typing verdict and output effects."""

    ref: UnitRef
    count: int
    mean: float
    std: float
    tokens: list[tuple[int, float, int]]
    windows: list[tuple[np.ndarray, np.ndarray]]
    typing: dict | None = None
    promote: list[tuple[int, float]] | None = None
    suppress: list[tuple[int, float]] | None = None
    stories: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class AttentionEvidence:
    """A head: mean attention to BOS / self / previous token, top (query, key, mass) pairs, its OV copying
    score (None without circuits) and the stories its examples came from."""

    ref: UnitRef
    bos: float
    self_: float
    prev: float
    pairs: list[tuple[int, int, float]]
    copying: float | None
    stories: set[int] = dataclasses.field(default_factory=set)


EVIDENCE_READERS: dict[str, Callable[[Book, int, int], object]] = {}


def register_evidence_reader(kind: str, fn: Callable[[Book, int, int], object]) -> None:
    unit_kind(kind)
    if kind in EVIDENCE_READERS:
        raise CircuitbookError(f"an evidence reader for {kind!r} is already registered")
    EVIDENCE_READERS[kind] = fn


def _windows(exs) -> tuple[list, set]:
    out, stories = [], set()
    for ex in exs:
        t = np.asarray(ex.tokens, np.int64)
        v = np.asarray(ex.values, np.float64)
        ok = (t >= 0) & np.isfinite(v)
        out.append((np.where(ok, t, -1), np.where(ok, v, np.nan)))
        stories.add(int(ex.story))
    return out, stories


def neuron_evidence(book: Book, layer: int, idx: int) -> ActivationEvidence | None:
    st = bs.neuron_stats(book, layer, idx)
    if st is None:
        return None
    exs = bs.top_examples(book, "neuron", layer, idx)
    for band in bs.quantile_examples(book, layer, idx).values():
        exs += band
    windows, stories = _windows(exs)
    toks = [(t.token_id, t.mean, t.count) for t in bs.token_means(book, layer, idx)]
    eff = bc.stored_neuron_output_effect(book, layer, idx)
    promote = list(zip(eff.top.ids, eff.top.values)) if eff else None
    suppress = list(zip(eff.bottom.ids, [-v for v in eff.bottom.values])) if eff else None
    return ActivationEvidence(UnitRef("neuron", layer, idx), st.count, st.mean, st.std, toks, windows,
                              br.unit_type(book, layer, idx), promote, suppress, stories)


def head_evidence(book: Book, layer: int, idx: int) -> AttentionEvidence | None:
    st = bs.head_stats(book, layer, idx)
    if st is None:
        return None
    pairs = [(p.q_token_id, p.k_token_id, p.mass) for p in bs.head_pairs(book, layer, idx)]
    _, stories = _windows(bs.top_examples(book, "head", layer, idx))
    sc = bc.head_scores(book, layer, idx).get((layer, idx), {})
    return AttentionEvidence(UnitRef("head", layer, idx), st.bos, st.self, st.prev, pairs, sc.get("ov_copying"),
                             stories)


register_evidence_reader("neuron", neuron_evidence)
register_evidence_reader("head", head_evidence)


def example_evidence(book: Book, kind: str, layer: int, idx: int) -> ActivationEvidence | None:
    """The fallback for an activation kind without its own reader: only its stored example windows
    (``scan_examples`` rows of that kind). Token means, count, mean and std are taken over the windows'
    tokens (a sample biased towards high activations: a kind that keeps exact statistics should register
    a reader that returns them)."""
    exs = bs.top_examples(book, kind, layer, idx)
    if not exs:
        return None
    windows, stories = _windows(exs)
    t = np.concatenate([w[0] for w in windows])
    v = np.concatenate([w[1] for w in windows])
    ok = (t >= 0) & np.isfinite(v)
    t, v = t[ok], v[ok]
    ids, inv, cnt = np.unique(t, return_inverse=True, return_counts=True)
    means = np.bincount(inv, v) / cnt
    order = np.argsort(-means)[:32]
    toks = [(int(ids[i]), float(means[i]), int(cnt[i])) for i in order if cnt[i] >= 3]
    return ActivationEvidence(UnitRef(kind, layer, idx), int(len(v)), float(v.mean()), float(v.std()), toks,
                              windows, None, None, None, stories)


def scanned_evidence(book: Book, kind: str, layer: int, idx: int) -> ActivationEvidence | None:
    """An activation kind the scan recorded with exact statistics (``scan_unit_stats``: dictionary features
    scanned with ``--features``): its stats, top and band examples and token means, as for a neuron; output
    effects where the circuits stage stored them (not for features: their writes go through the dictionary)."""
    st = bs.unit_stats(book, kind, layer, idx)
    if st is None:
        return None
    exs = bs.top_examples(book, kind, layer, idx)
    for band in bs.quantile_examples(book, layer, idx, kind=kind).values():
        exs += band
    windows, stories = _windows(exs)
    toks = [(t.token_id, t.mean, t.count) for t in bs.token_means(book, layer, idx, kind=kind)]
    return ActivationEvidence(UnitRef(kind, layer, idx), st.count, st.mean, st.std, toks, windows, None, None, None,
                              stories)


def reader_for(kind: str) -> Callable[[Book, int, int], object] | None:
    """The evidence reader of ``kind``: registered, else for activation kinds the scan's exact statistics
    where it recorded them, else the example-window fallback."""
    fn = EVIDENCE_READERS.get(kind)
    if fn is None and unit_kind(kind).stats == "activation":
        return lambda book, layer, idx: (scanned_evidence(book, kind, layer, idx)
                                         or example_evidence(book, kind, layer, idx))
    return fn


def output_effects(weights, kind: str, layer: int, idxs: list[int], k: int = 64, chunk: int = 256
                   ) -> dict[int, tuple[list[tuple[int, float]], list[tuple[int, float]], float]]:
    """{idx: (top k promoted (id, logit), top k suppressed (id, -logit), robust sd over the vocabulary)} for
    units of an activation kind: each unit's write row through diag(lnf_w) W_U, less its median over the
    vocabulary; the sd is 1.4826 x the median absolute deviation.
    Kinds that write more than one row (heads) are not covered (their OV circuit is)."""
    spec = unit_kind(kind)
    if spec.write_weights is None or spec.stats != "activation":
        return {}
    M = (weights.lnf_w.float()[:, None] * weights.W_U.float())  # [d_model, V]
    out = {}
    for s in range(0, len(idxs), chunk):
        part = idxs[s:s + chunk]
        rows = torch.cat([spec.write_weights(weights, layer, i).float().reshape(1, -1) for i in part])
        rows = rows - rows.mean(-1, keepdim=True) if weights.cfg.norm == "LN" else rows
        E = rows @ M
        E = E - E.median(-1, keepdim=True).values
        sd = 1.4826 * E.abs().median(-1).values  # robust: a planted set can be a quarter of a small vocabulary
        tv, ti = E.topk(min(k, E.shape[1]), -1)
        bv, bi = (-E).topk(min(k, E.shape[1]), -1)
        for j, i in enumerate(part):
            out[i] = (list(zip(ti[j].tolist(), tv[j].tolist())), list(zip(bi[j].tolist(), bv[j].tolist())),
                      float(sd[j]))
    return out
