"""Compute every weight-based circuit analysis of a model and store it in the book.

Work is split into tasks (norm scales, direct path, one per head, one per neuron layer and path, composition,
virtual heads, detectors). Each task's results and its "done" mark are written in one transaction, so an
interrupted run leaves only whole tasks behind and the next run resumes after them. Changing any setting
(or the model, or the corpus) recomputes everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..book import circuits as store
from ..book.core import Book
from .basis import NormScales, make_basis, measure_scales
from .composition import composition_scores, virtual_head
from .detectors import detector_scores
from .direct_path import bigram_table, direct_path_loss
from .eigen import factored_eigenvalues, summarize
from .neuron_in import input_paths, neuron_input_effects
from .neuron_out import neuron_output_effects, output_paths
from .ov import head_name, ov_factors, ov_tops
from .qk import positional_qk, qk_tops
from .skip_trigrams import skip_trigrams


@dataclasses.dataclass
class CircuitsSettings:
    """k: tokens kept per neuron effect; k_rows: tokens kept per row of the token x token circuits (OV, QK,
    bigram) for every token in the vocabulary; n_pairs: global top pairs kept per circuit; n_trigrams per head;
    n_virtual: virtual heads (strongest V-composition pairs) analysed; max_offset: positional QK profile
    length; pos_window: positions averaged into the token basis; max_stories / max_tokens: corpus budget for
    norm scales and the direct-path loss; detector_seqs / detector_len / seed: detector inputs."""

    k: int = 10
    k_rows: int = 5
    n_pairs: int = 100
    n_trigrams: int = 50
    n_virtual: int = 8
    max_offset: int = 32
    pos_window: int = 256
    max_stories: int = 200
    max_tokens: int = 20_000
    detector_seqs: int = 32
    detector_len: int = 50
    seed: int = 0


@dataclasses.dataclass
class CircuitsSummary:
    """What a run did: tasks computed / skipped (already in the book), seconds, and headline findings."""

    computed: int
    skipped: int
    seconds: float
    direct_path_loss: dict | None
    previous_token: list[tuple[int, int, float]]
    induction: list[tuple[int, int, float]]
    duplicate_token: list[tuple[int, int, float]]
    copying: list[tuple[int, int, float]]
    composition: dict[str, list[tuple[int, int, int, int, float]]]
    notes: list[str]

    def lines(self) -> list[str]:
        """Human-readable report (what the CLI and the demo print)."""
        f = lambda xs: ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in xs) or "-"  # noqa: E731
        out = [f"circuits: {self.computed} tasks computed, {self.skipped} already in the book, {self.seconds:.1f}s"]
        if self.direct_path_loss:
            d = self.direct_path_loss
            out.append(f"  direct path (bigrams) loss {d['direct']:.3f} vs full model {d['full']:.3f} vs uniform "
                       f"{d['uniform']:.3f} nats/token: bigrams carry {100 * d['explained']:.0f}% of the gain")
        out.append(f"  copying heads (OV eigenvalue score): {f(self.copying)}")
        out.append(f"  previous-token heads: {f(self.previous_token)}")
        out.append(f"  duplicate-token heads: {f(self.duplicate_token)}")
        out.append(f"  induction heads: {f(self.induction)}")
        for m, xs in self.composition.items():
            out.append(f"  {m}-composition: " + (", ".join(f"L{a}H{b}->L{c}H{d} {s:.2f}" for a, b, c, d, s in xs) or "-"))
        out += [f"  note: {n}" for n in self.notes]
        return out


def _stories_id(stories) -> tuple[str | None, list[str] | str | None]:
    if stories is None:
        return None, None
    if isinstance(stories, (str, Path)):
        from ..corpus import corpus_hash

        return corpus_hash(stories), str(stories)
    stories = list(stories)
    return hashlib.sha256("\x00".join(stories).encode()).hexdigest()[:16], stories


def _batches(model, stories, s: CircuitsSettings):
    from itertools import islice

    from ..corpus import batches, read_stories

    src = read_stories(stories) if isinstance(stories, str) else iter(stories)
    return batches(islice(src, s.max_stories), model.tokenizer, max_len=min(256, model.cfg.n_ctx), batch_size=4)


def run_circuits(model, book: Book, stories: str | Path | Iterable[str] | None = None,
                 settings: CircuitsSettings | None = None, progress: bool = True, overwrite: bool = False,
                 echo: Callable[[str], None] | None = None) -> CircuitsSummary:
    """Compute and store every circuit analysis of ``model`` in ``book`` (resuming if interrupted).

    stories: a corpus path or list of story strings, used to measure typical norm scales (so effects come in
    logit units) and the direct-path loss; without it scales are 1 and the loss is skipped.
    overwrite: rebind the book to this model even if it describes another one.
    """
    t0 = time.time()
    s = settings or CircuitsSettings()
    cfg = model.cfg
    book.bind_model(model, overwrite=overwrite)
    corpus_id, stories = _stories_id(stories)
    want = dict(dataclasses.asdict(s), model=model.fingerprint(), corpus=corpus_id)
    if store.summary(book, "settings") != want:
        store.clear(book)
        with book.transaction() as c:
            store.set_summary(c, "settings", want)
    done = store.done_tasks(book)
    notes: list[str] = []

    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    tasks = ["scales"] + (["direct_path_loss"] if stories is not None else []) + ["bigram"]
    tasks += [f"head:{head_name(l, h)}" for l, h in heads]
    tasks += [f"neuron_out:{l}:{store._via_key(v)}" for l in range(cfg.n_layers) for v in output_paths(cfg, l)]
    tasks += [f"neuron_in:{l}:{store._via_key(v)}" for l in range(cfg.n_layers) for v in input_paths(cfg, l)]
    if cfg.n_layers > 1:
        tasks += ["composition", "virtual"]
    tasks += ["detectors"]
    if cfg.positional == "rotary":
        notes.append("rotary positions: no W_pos, so no positional QK profile; QK token circuits are the "
                     "scores at relative offset 0")
    if cfg.n_layers == 1:
        notes.append("one layer: no composition, no virtual heads, no induction circuit possible")

    run_id = book.start_run("circuits", want)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc="circuits", unit="task")
    computed = skipped = 0
    basis = None
    try:
        for task in tasks:
            if bar is not None:
                bar.set_postfix_str(task)
            if task in done:
                skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            if basis is None and task != "scales":
                scales = store.summary(book, "scales")
                basis = make_basis(model, NormScales(**scales) if scales else None, s.pos_window)
            _run_task(task, model, book, basis, stories, s)
            computed += 1
            if task == "scales":
                basis = None
            if bar is not None:
                bar.update(1)
        with book.transaction() as c:
            store.set_summary(c, "notes", notes)
    except BaseException:
        book.finish_run(run_id, {"computed": computed}, status="interrupted")
        raise
    finally:
        if bar is not None:
            bar.close()
    summ = _summarize(book, computed, skipped, time.time() - t0, notes)
    book.finish_run(run_id, {"computed": computed, "skipped": skipped, "seconds": summ.seconds})
    if echo is not None:
        for line in summ.lines():
            echo(line)
    return summ


@torch.inference_mode()
def _run_task(task: str, model, book: Book, basis, stories, s: CircuitsSettings) -> None:
    cfg = model.cfg
    kind, _, arg = task.partition(":")
    if kind == "scales":
        sc = measure_scales(model, _batches(model, stories, s), min(s.max_tokens, 4096)) if stories is not None \
            else NormScales.unit(cfg.n_layers)
        with book.transaction() as c:
            store.set_summary(c, "scales", dataclasses.asdict(sc))
            store.mark_done(c, task)
    elif kind == "direct_path_loss":
        d = direct_path_loss(basis, _batches(model, stories, s), s.max_tokens)
        with book.transaction() as c:
            store.set_summary(c, "direct_path_loss", dict(dataclasses.asdict(d), explained=d.explained))
            store.mark_done(c, task)
    elif kind == "bigram":
        t = bigram_table(basis, s.k_rows, s.n_pairs)
        with book.transaction() as c:
            store.store_rows(c, "bigram", t.top.ids, t.top.vals)
            store.store_pairs(c, "bigram", 1, t.pairs.rows, t.pairs.cols, t.pairs.vals)
            store.mark_done(c, task)
    elif kind == "head":
        l, h = (int(x) for x in arg[1:].split("H"))
        ov = ov_tops(basis, l, h, s.k_rows, s.n_pairs, bottom_pairs=True)
        qk = qk_tops(basis, l, h, s.k_rows, s.n_pairs)
        ov_e = summarize(factored_eigenvalues(*ov_factors(basis, l, h)))
        from .eigen import qk_same_token

        qk_e = qk_same_token(basis, l, h)
        scores = {"ov_copying": ov_e.copying, "ov_positive_share": ov_e.positive_share,
                  "qk_same_token": qk_e.copying, "qk_positive_share": qk_e.positive_share}
        pos = None
        if basis.pos is not None:
            pos = positional_qk(basis, l, h, s.max_offset)
            scores.update(positional_share=pos.positional_share, preferred_offset=pos.preferred_offset)
        tri = skip_trigrams(qk, ov, s.n_trigrams)
        with book.transaction() as c:
            for name, t in (("ov", ov), ("qk", qk)):
                key = f"{name}:{arg}"
                store.store_rows(c, key, t.top.ids, t.top.vals)
                store.store_pairs(c, key, 1, t.top_pairs.rows, t.top_pairs.cols, t.top_pairs.vals)
                if t.bottom_pairs is not None:
                    store.store_pairs(c, key, -1, t.bottom_pairs.rows, t.bottom_pairs.cols, t.bottom_pairs.vals)
            store.store_head_scores(c, l, h, scores)
            if pos is not None:
                store.store_profile(c, l, h, "positional_qk", pos.profile)
            store.store_trigrams(c, l, h, tri.key, tri.query, tri.output, tri.qk, tri.ov, tri.score)
            store.mark_done(c, task)
    elif kind in ("neuron_out", "neuron_in"):
        layer, via_s = arg.split(":")
        via = tuple(int(x) for x in via_s[1:].split("H")) if via_s else None
        fn = neuron_output_effects if kind == "neuron_out" else neuron_input_effects
        e = fn(basis, int(layer), via, s.k)
        with book.transaction() as c:
            store.store_effects(c, kind, int(layer), via_s, e.top.ids, e.top.vals, e.bottom.ids, e.bottom.vals, e.norms)
            store.mark_done(c, task)
    elif kind == "composition":
        cs = composition_scores(basis)
        with book.transaction() as c:
            for m in ("Q", "K", "V"):
                store.store_composition(c, m, cs[m])
            store.mark_done(c, task)
    elif kind == "virtual":
        comp = store.top_compositions(book, "V", s.n_virtual)
        with book.transaction() as c:
            for l1, h1, l2, h2, score in comp:
                vh = virtual_head(basis, l1, h1, l2, h2, s.k_rows, s.n_pairs, v_score=score)
                key = f"ov:{vh.tops.name}"
                store.store_rows(c, key, vh.tops.top.ids, vh.tops.top.vals)
                store.store_pairs(c, key, 1, vh.tops.top_pairs.rows, vh.tops.top_pairs.cols, vh.tops.top_pairs.vals)
                store.store_pairs(c, key, -1, vh.tops.bottom_pairs.rows, vh.tops.bottom_pairs.cols,
                                  vh.tops.bottom_pairs.vals)
                store.store_virtual(c, l1, h1, l2, h2, score, vh.eigen.copying, vh.eigen.positive_share)
            store.mark_done(c, task)
    elif kind == "detectors":
        tok = model.tokenizer
        specials = tuple(i for i in {getattr(tok, "bos_id", None), getattr(tok, "eos_id", None),
                                     cfg.bos_token_id, cfg.eos_token_id} if i is not None)
        n_usable = cfg.d_vocab - len(specials)
        seq_len = max(2, min(s.detector_len, (cfg.n_ctx - 1) // 2, n_usable))
        d = detector_scores(model, s.detector_seqs, seq_len, s.seed, exclude=specials)
        with book.transaction() as c:
            for l in range(cfg.n_layers):
                for h in range(cfg.n_heads):
                    store.store_head_scores(c, l, h, {n: float(d[n][l, h]) for n in
                                                      ("previous_token", "duplicate_token", "induction")})
            store.set_summary(c, "detectors", {"seq_len": seq_len, "n_seqs": s.detector_seqs, "seed": s.seed})
            store.mark_done(c, task)
    else:  # pragma: no cover
        raise ValueError(f"unknown circuits task {task!r}")


def _summarize(book: Book, computed: int, skipped: int, seconds: float, notes: list[str]) -> CircuitsSummary:
    hs = store.head_scores(book)

    def best(name, n=3):
        xs = [(l, h, v[name]) for (l, h), v in hs.items() if v.get(name) is not None]
        return sorted(xs, key=lambda x: -x[2])[:n]

    comp = {m: store.top_compositions(book, m, 3) for m in ("Q", "K", "V")} if (book.config or {}).get("n_layers", 1) > 1 else {}
    return CircuitsSummary(computed, skipped, seconds, store.summary(book, "direct_path_loss"),
                           best("previous_token"), best("induction"), best("duplicate_token"), best("ov_copying"),
                           comp, notes)
