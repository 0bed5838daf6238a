"""The built-in circuit analyses as registered tasks, in run order (see :mod:`.tasks`).

Each task's ``compute`` calls the public function of its analysis module, so a number in the book is the
number that function returns for the same basis and settings. Done marks (``circuit_done.task``), stable
since the first books: 'scales', 'direct_path_loss', 'bigram', 'head:L0H3', 'neuron_out:0:' (direct path)
and 'neuron_out:0:L1H2' (through a head), 'neuron_in:...', 'composition', 'virtual', 'detectors'.

    scales            typical norm scales from the corpus (unit scales without one); the basis is made from them
    direct_path_loss  loss of the direct-path-only model (only with a corpus)
    bigram            the direct path's bigram table
    head              per head: OV and QK tops, OV copying / QK same-token eigen summaries, positional QK
                      profile (learned positions only), skip-trigrams
    neuron_out        per layer and path: every neuron's output effect
    neuron_in         per layer and path: every neuron's input effect
    composition       Q/K/V composition scores (2+ layers)
    virtual           the strongest V-composition pairs' virtual-head OV circuits (after composition)
    detectors         previous-token / duplicate-token / induction scores on repeated random tokens
"""

from __future__ import annotations

import dataclasses

from ..book import circuits as store
from .basis import NormScales, measure_scales
from .composition import MODES, composition_scores, virtual_head
from .detectors import NAMES as DETECTORS
from .detectors import detector_scores
from .direct_path import bigram_table, direct_path_loss
from .eigen import EigenSummary, ov_copying, qk_same_token
from .neuron_in import input_paths, neuron_input_effects
from .neuron_out import neuron_output_effects, output_paths
from .ov import head_name, ov_tops
from .qk import PositionalQK, positional_qk, qk_tops
from .screened_topk import CircuitTops
from .skip_trigrams import SkipTrigrams, skip_trigrams
from .tasks import SCALES_TASK, CircuitTask, register_task


def _store_tops(conn, circuit: str, t: CircuitTops) -> None:
    """A token x token circuit's per-row tops and its global top (and bottom, if kept) pairs."""
    store.store_rows(conn, circuit, t.top.ids, t.top.vals)
    store.store_pairs(conn, circuit, 1, t.top_pairs.rows, t.top_pairs.cols, t.top_pairs.vals)
    if t.bottom_pairs is not None:
        store.store_pairs(conn, circuit, -1, t.bottom_pairs.rows, t.bottom_pairs.cols, t.bottom_pairs.vals)


def _heads(cfg, settings, has_corpus) -> list[tuple[int, int]]:
    return [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def _head_key(lh: tuple[int, int]) -> str:
    return head_name(*lh)


def _if_composing(cfg, settings, has_corpus) -> list:
    return [None] if cfg.n_layers > 1 else []


# ---------------------------------------------------------------------------------------------- scales
def _scales(ctx, _) -> NormScales:
    s = ctx.settings
    if ctx.stories is None:
        return NormScales.unit(ctx.model.cfg.n_layers)
    return measure_scales(ctx.model, ctx.batches(), min(s.max_tokens, 4096))


register_task(CircuitTask(
    SCALES_TASK, compute=_scales, needs_basis=False,
    store=lambda conn, _, sc: store.set_summary(conn, "scales", dataclasses.asdict(sc))))


# ---------------------------------------------------------------------------------------------- direct path
def _store_direct_path_loss(conn, _, d) -> None:
    store.set_summary(conn, "direct_path_loss", dict(dataclasses.asdict(d), explained=d.explained))


register_task(CircuitTask(
    "direct_path_loss", units=lambda cfg, settings, has_corpus: [None] if has_corpus else [],
    compute=lambda ctx, _: direct_path_loss(ctx.basis, ctx.batches(), ctx.settings.max_tokens),
    store=_store_direct_path_loss))


def _store_bigram(conn, _, t) -> None:
    store.store_rows(conn, "bigram", t.top.ids, t.top.vals)
    store.store_pairs(conn, "bigram", 1, t.pairs.rows, t.pairs.cols, t.pairs.vals)


register_task(CircuitTask(
    "bigram", compute=lambda ctx, _: bigram_table(ctx.basis, ctx.settings.k_rows, ctx.settings.n_pairs),
    store=_store_bigram))


# ---------------------------------------------------------------------------------------------- heads
@dataclasses.dataclass
class HeadCircuits:
    """Everything the 'head' task stores for one head: OV tops (with bottom pairs), QK tops, the OV copying
    and QK same-token eigen summaries, the positional QK profile (None for rotary models), skip-trigrams."""

    ov: CircuitTops
    qk: CircuitTops
    ov_eigen: EigenSummary
    qk_eigen: EigenSummary
    positional: PositionalQK | None
    trigrams: SkipTrigrams

    def scores(self) -> dict[str, float]:
        """The head scores (``circuit_head_scores``) this task owns."""
        out = {"ov_copying": self.ov_eigen.copying, "ov_positive_share": self.ov_eigen.positive_share,
               "qk_same_token": self.qk_eigen.copying, "qk_positive_share": self.qk_eigen.positive_share}
        if self.positional is not None:
            out.update(positional_share=self.positional.positional_share,
                       preferred_offset=self.positional.preferred_offset)
        return out


def _head(ctx, lh: tuple[int, int]) -> HeadCircuits:
    b, s = ctx.basis, ctx.settings
    ov = ov_tops(b, *lh, s.k_rows, s.n_pairs, bottom_pairs=True)
    qk = qk_tops(b, *lh, s.k_rows, s.n_pairs)
    pos = positional_qk(b, *lh, s.max_offset) if b.pos is not None else None
    return HeadCircuits(ov, qk, ov_copying(b, *lh), qk_same_token(b, *lh), pos, skip_trigrams(qk, ov, s.n_trigrams))


def _store_head(conn, lh: tuple[int, int], r: HeadCircuits) -> None:
    name = head_name(*lh)
    _store_tops(conn, f"ov:{name}", r.ov)
    _store_tops(conn, f"qk:{name}", r.qk)
    store.store_head_scores(conn, *lh, r.scores())
    if r.positional is not None:
        store.store_profile(conn, *lh, "positional_qk", r.positional.profile)
    t = r.trigrams
    store.store_trigrams(conn, *lh, t.key, t.query, t.output, t.qk, t.ov, t.score)


register_task(CircuitTask("head", units=_heads, key=_head_key, compute=_head, store=_store_head))


# ---------------------------------------------------------------------------------------------- neurons
def _via_mark(via: tuple[int, int] | None) -> str:
    return "" if via is None else head_name(*via)


def _neuron_task(name: str, paths, effects) -> CircuitTask:
    """Per (layer, path): every neuron's token effect (``effects``: neuron_output_effects or _input_)."""

    def store_effects(conn, arg, e) -> None:
        layer, via = arg
        store.store_effects(conn, name, layer, via, e.top.ids, e.top.vals, e.bottom.ids, e.bottom.vals, e.norms)

    return CircuitTask(
        name, units=lambda cfg, settings, has_corpus: [(l, v) for l in range(cfg.n_layers) for v in paths(cfg, l)],
        key=lambda arg: f"{arg[0]}:{_via_mark(arg[1])}",
        compute=lambda ctx, arg: effects(ctx.basis, arg[0], arg[1], ctx.settings.k), store=store_effects)


register_task(_neuron_task("neuron_out", output_paths, neuron_output_effects))
register_task(_neuron_task("neuron_in", input_paths, neuron_input_effects))


# ---------------------------------------------------------------------------------------------- composition
def _store_composition(conn, _, cs) -> None:
    for m in MODES:
        store.store_composition(conn, m, cs[m])


register_task(CircuitTask("composition", units=_if_composing, compute=lambda ctx, _: composition_scores(ctx.basis),
                          store=_store_composition))


def _virtual(ctx, _) -> list:
    s = ctx.settings
    return [virtual_head(ctx.basis, l1, h1, l2, h2, s.k_rows, s.n_pairs, v_score=score)
            for l1, h1, l2, h2, score in store.top_compositions(ctx.book, "V", s.n_virtual)]


def _store_virtual(conn, _, heads: list) -> None:
    for vh in heads:
        _store_tops(conn, f"ov:{vh.tops.name}", vh.tops)
        store.store_virtual(conn, vh.l1, vh.h1, vh.l2, vh.h2, vh.v_score, vh.eigen.copying, vh.eigen.positive_share)


register_task(CircuitTask("virtual", units=_if_composing, after=("composition",), compute=_virtual,
                          store=_store_virtual))


# ---------------------------------------------------------------------------------------------- detectors
def _detectors(ctx, _):
    model, s = ctx.model, ctx.settings
    cfg, tok = model.cfg, model.tokenizer
    specials = tuple(i for i in {getattr(tok, "bos_id", None), getattr(tok, "eos_id", None),
                                 cfg.bos_token_id, cfg.eos_token_id} if i is not None)
    n_usable = cfg.d_vocab - len(specials)
    seq_len = max(2, min(s.detector_len, (cfg.n_ctx - 1) // 2, n_usable))
    return detector_scores(model, s.detector_seqs, seq_len, s.seed, exclude=specials)


def _store_detectors(conn, _, d) -> None:
    L, H = d.previous_token.shape
    for l in range(L):
        for h in range(H):
            store.store_head_scores(conn, l, h, {n: float(d[n][l, h]) for n in DETECTORS})
    store.set_summary(conn, "detectors", {"seq_len": d.seq_len, "n_seqs": d.n_seqs, "seed": d.seed})


register_task(CircuitTask("detectors", compute=_detectors, store=_store_detectors, needs_basis=False))
