"""Compute every weight-based circuit analysis of a model and store it in the book.

The analyses are the registered tasks of :mod:`.tasks` (the built-in ones in :mod:`.builtin_tasks`: norm
scales, direct path, one unit per head, one per neuron layer and path, composition, virtual heads,
detectors), run in registration order. Each unit's results and its "done" mark are written in one
transaction, so an interrupted run leaves only whole units behind and the next run resumes after them.
Changing any setting (or the model, or the corpus) recomputes everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import torch

from ..book import circuits as store
from ..book.core import Book
from . import builtin_tasks  # noqa: F401  (registers the built-in analyses)
from .basis import NormScales  # noqa: F401  (re-exported: run.NormScales)
from .tasks import CircuitTask, TaskContext, registered_tasks


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
    """What a run did: tasks computed / skipped (already in the book), seconds (task_seconds: per task name,
    summed over its units, computed this run), and headline findings."""

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
    task_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable report (what the CLI and the demo print)."""
        f = lambda xs: ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in xs) or "-"  # noqa: E731
        out = [f"circuits: {self.computed} tasks computed, {self.skipped} already in the book, {self.seconds:.1f}s"]
        if self.direct_path_loss:
            d = self.direct_path_loss
            n = lambda x, fmt: "n/a" if x is None else format(x, fmt)  # noqa: E731  (NaN is stored as NULL)
            share = "n/a" if d.get("explained") is None else f"{100 * d['explained']:.0f}%"
            out.append(f"  direct path (bigrams) loss {n(d.get('direct'), '.3f')} vs full model "
                       f"{n(d.get('full'), '.3f')} vs uniform {n(d.get('uniform'), '.3f')} nats/token: "
                       f"bigrams carry {share} of the gain")
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


class _Unit(NamedTuple):
    """One unit of work: a task, its argument and the done mark it leaves in the book."""

    task: CircuitTask
    arg: Any
    mark: str


def _plan(cfg, s: CircuitsSettings, has_corpus: bool) -> list[_Unit]:
    """Every unit of every registered task for this model, in run order."""
    return [_Unit(t, a, t.done_mark(a)) for t in registered_tasks() for a in t.units(cfg, s, has_corpus)]


def tuning(cfg) -> dict:
    """The kernel choices this machine makes for ``cfg``'s circuits (:mod:`circuitbook.tune`: measured once
    per machine and cached): the screening dtype of the d_vocab x d_vocab OV / QK circuits with its measured
    GFLOP/s, and the CPU. Stored in the run's settings (``runs`` table); results do not depend on it."""
    from ..tune import cpu_info, screen_choice

    rows = max(1, (1 << 24) // max(1, cfg.d_vocab))
    c = cpu_info()
    return {"screen": screen_choice(cfg.d_head, cfg.d_vocab, rows), "cpu": c["model"], "flags": c["flags"],
            "threads": torch.get_num_threads()}


def tuning_lines(t: dict) -> list[str]:
    """Human-readable lines for :func:`tuning` (``circuitbook circuits -v``)."""
    s = t["screen"]
    rates = ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in s.get("gflops", {}).items()) or "not measured"
    return [f"cpu: {t['cpu']} ({' '.join(t['flags']) or 'no AVX2/AVX-512 flags'}), {t['threads']} threads",
            f"screening matmul: {s['dtype']} ({s['source']}; {rates})"]


def run_circuits(model, book: Book, stories: str | Path | Iterable[str] | None = None,
                 settings: CircuitsSettings | None = None, progress: bool = True, overwrite: bool = False,
                 echo: Callable[[str], None] | None = None, verbose: bool = False) -> CircuitsSummary:
    """Compute and store every circuit analysis of ``model`` in ``book`` (resuming if interrupted).

    stories: a corpus path or list of story strings, used to measure typical norm scales (so effects come in
    logit units) and the direct-path loss; without it scales are 1 and the loss is skipped.
    overwrite: rebind the book to this model even if it describes another one.
    verbose: also echo the kernel choices (:func:`tuning`) and each task's seconds. The choices are stored
    in the run's settings either way, and ``CircuitsSummary.task_seconds`` has the per-task times.
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

    units = _plan(cfg, s, stories is not None)
    if cfg.positional == "rotary":
        notes.append("rotary positions: no W_pos, so no positional QK profile; QK token circuits are the "
                     "scores at relative offset 0")
    if cfg.n_layers == 1:
        notes.append("one layer: no composition, no virtual heads, no induction circuit possible")

    tuned = tuning(cfg)
    if verbose and echo is not None:
        for line in tuning_lines(tuned):
            echo(line)
    run_id = book.start_run("circuits", dict(want, tuning=tuned))
    bar = None
    if progress:
        from ..progress import progress as progress_bar

        bar = progress_bar(total=len(units), desc="circuits", unit="task")
    computed = skipped = 0
    ctx = TaskContext(model, book, s, stories)
    seconds: dict[str, float] = {}
    try:
        for unit in units:
            if bar is not None:
                bar.set_postfix_str(unit.mark)
            if unit.mark in done:
                skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            t = time.perf_counter()
            _run_task(unit, ctx)
            seconds[unit.task.name] = seconds.get(unit.task.name, 0.0) + time.perf_counter() - t
            computed += 1
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
    summ.task_seconds = {k: round(v, 3) for k, v in seconds.items()}
    book.finish_run(run_id, {"computed": computed, "skipped": skipped, "seconds": summ.seconds,
                             "task_seconds": summ.task_seconds})
    if echo is not None:
        for line in summ.lines():
            echo(line)
        if verbose:
            echo("  seconds per task: " + (", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) or "-"))
    return summ


def _run_task(unit: _Unit, ctx: TaskContext) -> None:
    """Compute one unit, then store its result and its done mark in one transaction."""
    with torch.inference_mode():
        result = unit.task.compute(ctx, unit.arg)
    with ctx.book.transaction() as c:
        unit.task.store(c, unit.arg, result)
        store.mark_done(c, unit.mark)


def _summarize(book: Book, computed: int, skipped: int, seconds: float, notes: list[str]) -> CircuitsSummary:
    hs = store.head_scores(book)

    def best(name, n=3):
        xs = [(l, h, v[name]) for (l, h), v in hs.items() if v.get(name) is not None]
        return sorted(xs, key=lambda x: -x[2])[:n]

    comp = {m: store.top_compositions(book, m, 3) for m in ("Q", "K", "V")} if (book.config or {}).get("n_layers", 1) > 1 else {}
    return CircuitsSummary(computed, skipped, seconds, store.summary(book, "direct_path_loss"),
                           best("previous_token"), best("induction"), best("duplicate_token"), best("ov_copying"),
                           comp, notes)
