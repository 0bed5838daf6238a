"""Explanation scoring scaled out: the book's explanations split into N shard jobs on an executor, retried,
and stored as one score run, the same scores a single process stores.

    result = scale_score(book, model, {"model": path, "dtype": "fp32", "device": "cpu"}, corpus, settings,
                         shards=4, executor="ray", n_stories=200)

The coordinator (this process, holding the book's write lock) checks the stories are held out, imports the
parseable labels, and lists the explanations to score (``explain.run.scoring_items``, a deterministic order);
shard i of n gets every n-th item (the fast-path neurons by whole chunks: ``split_items``). Each worker opens
the book read-only, checks it lists the same explanations (ids), collects the held-out activations of the same
stories with the same taps (``explain.score.collect``; every unit's score depends only on those, on its own
program and, for fast-path units, on its chunk, so the split changes no figure) and scores its items with
``score_units``, writing the scores to ``BOOK.score-shards/shard-i-of-n.json``
(atomically, with the shard's identity: model fingerprint, corpus, stories, settings, kinds, explanation ids).
A shard whose file is there with this identity is reused; a failed shard is submitted again, at most
``retries`` times. When every shard is in, the scores are stored in item order as one ``score`` run (the
settings a single-process run records; the summary adds ``shards`` and ``executor``), then BOOK.score-shards/
(shard files, specs, logs) is removed. Progress: the workers' units done, summed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from itertools import islice
from pathlib import Path

from .coordinate import Tracker, run_rounds, why_pending
from .executors import ExecutorOptions, ScaleError, make_executor

PROGRESS_S = 0.5


def score_dir(book: str | Path) -> Path:
    return Path(f"{book}.score-shards")


def score_file(book: str | Path, i: int, n: int) -> Path:
    return score_dir(book) / f"shard-{i}-of-{n}.json"


def _stories(corpus: str, n_stories: int | None, encoding: str | None) -> list[str]:
    from ..corpus import read_stories, using_encoding

    with using_encoding(encoding):
        return list(islice(read_stories(corpus), n_stories))


def _identity(fingerprint: str, corpus: str, n_stories, st, kinds, eids: list[int], i: int, n: int) -> dict:
    return {"model": fingerprint, "corpus": corpus, "stories": n_stories, "settings": dataclasses.asdict(st),
            "kinds": sorted(kinds) if kinds else None, "explanations": eids, "shard": [i, n]}


def split_items(items: list[tuple], n: int, unit_chunk: int, cfg) -> list[list[tuple]]:
    """Shard i's items, each list in the global order. Fast-path units (explain.score.fast_path) go by whole
    chunks: chunk g (fast units g*unit_chunk ...) to shard g mod n, so every shard forms the very chunks one
    process forms (a chunk's losses come from one product, and its float sums depend on which rows are in it);
    the other units go round-robin."""
    from ..explain.score import fast_path

    out: list[list[tuple]] = [[] for _ in range(n)]
    n_fast = n_other = 0
    for it in items:
        if fast_path(it[0], it[1], cfg):
            out[(n_fast // unit_chunk) % n].append(it)
            n_fast += 1
        else:
            out[n_other % n].append(it)
            n_other += 1
    return out


def _done(path: Path, ident: dict) -> bool:
    try:
        return json.loads(path.read_text()).get("identity") == ident
    except (OSError, ValueError):
        return False


def scale_score(book, model, model_spec: dict, corpus: str, settings=None, *, shards: int,
                executor: str = "local", retries: int = 2, opts: ExecutorOptions | None = None,
                n_stories: int | None = None, kinds: list[str] | None = None, corpus_label: str | None = None,
                encoding: str | None = None, progress: bool = True):
    """Score every current explanation of ``book`` (an open, writable Book) in ``shards`` shard jobs on
    ``executor`` and store the scores as one score run (module doc). Returns (the ScoreResult, {shards,
    reused, jobs, failures}: shard files already there, jobs submitted, one line per failed attempt)."""
    from ..book import explanations as be
    from ..explain.labels import import_labels
    from ..explain.run import scoring_items
    from ..explain.score import ScoreError, ScoreResult, ScoreSettings, UnitScore, check_held_out

    if shards < 1:
        raise ScaleError(f"--shards {shards}: need at least 1")
    if retries < 0:
        raise ScaleError(f"--retries {retries}: need >= 0")
    st = settings or ScoreSettings()
    stories = _stories(corpus, n_stories, encoding)
    if not stories:
        raise ScoreError("the scoring corpus has no stories")
    held = check_held_out(book, stories)
    import_labels(book)
    items = scoring_items(book, kinds)
    if not items:
        raise ScoreError(f"{book.path} has no explanations with a program to score: run `circuitbook explain` first")
    fp = model.fingerprint()
    label = corpus_label or corpus
    parts = split_items(items, shards, st.unit_chunk, model.cfg)
    idents = {i: _identity(fp, label, n_stories, st, kinds, [it[3] for it in parts[i]], i, shards)
              for i in range(shards)}
    taps = sorted({(k, l) for k, l, *_ in items})  # every shard collects all of them: which activations a forward
    # taps changes how it computes (e.g. per-head results), hence the float values of the others
    files = {i: score_file(book.path, i, shards) for i in range(shards)}
    pending = [i for i in range(shards) if not _done(files[i], idents[i])]
    reused = shards - len(pending)
    ran, failures = 0, []
    tracker = Tracker([Path(f"{files[i]}.progress.json") for i in range(shards)], "units",
                      f"score {shards} shards on {executor}", "unit", enabled=progress)
    t0 = time.time()
    if pending:
        score_dir(book.path).mkdir(parents=True, exist_ok=True)
        ex = make_executor(executor, dataclasses.replace(opts or ExecutorOptions(), folder=score_dir(book.path)))
        ex.start()
        try:
            tracker.start()
            ran, failures, pending = run_rounds(
                ex, pending, lambda i, attempt, jobs: {
                    **model_spec, "job": "score", "book": str(book.path), "corpus": corpus, "encoding": encoding,
                    "stories": n_stories, "settings": dataclasses.asdict(st), "kinds": kinds, "shard": [i, shards],
                    "out": str(files[i]), "progress": f"{files[i]}.progress.json", "identity": idents[i], "taps": taps,
                    "threads": ex.threads(jobs)},
                lambda i: _done(files[i], idents[i]), retries, shards)
        finally:
            tracker.stop()
            ex.close()
    if pending:
        raise ScaleError(f"{len(pending)} of {shards} score shards did not finish after {retries + 1} attempts: "
                         f"{why_pending(pending, failures, shards)}; the {shards - len(pending)} finished ones are "
                         f"kept in {score_dir(book.path)} (re-run the same command to retry the rest)")
    outs = [json.loads(files[i].read_text()) for i in range(shards)]
    by_eid = {row["explanation_id"]: UnitScore(**row) for o in outs for row in o["scores"]}
    scores = [by_eid[it[3]] for it in items]
    forwards = sum(o["forwards"] for o in outs)
    batches = max(o["batches"] for o in outs)
    l_orig = next((o["ce_original"] for o in outs if o["ce_original"] is not None), None)
    be.store_score_run(book, {"settings": dataclasses.asdict(st), "corpus": label, "held_out": held},
                       [s.to_row() for s in scores],
                       {"n": len(scores), "forwards": forwards, "batches": batches, "shards": shards,
                        "executor": executor, "reused": reused, "jobs": ran, "seconds": round(time.time() - t0, 3)})
    shutil.rmtree(score_dir(book.path), ignore_errors=True)  # stored: the shard files, specs and logs go
    return ScoreResult(scores, forwards, batches, held, l_orig), {"shards": shards, "reused": reused, "jobs": ran,
                                                                  "failures": failures}


def run_score_shard(spec: dict) -> dict:
    """One score shard (what the worker runs for ``spec["job"] == "score"``); raises on failure."""
    import torch

    from ..book import Book
    from ..explain.run import resolver_for, scoring_items
    from ..explain.score import ScoreSettings, collect, score_units
    from ..model import DTYPES, load_model
    from .worker import kill_after, write_progress

    i, n = spec["shard"]
    model = load_model(spec["model"], dtype=DTYPES[spec["dtype"]], device=spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    book = Book.open(spec["book"], create=False, readonly=True)
    try:
        from ..dictionary.access import register_feature_access

        register_feature_access(model, book)  # as the coordinator did: features scorable, same fast-path chunks
        want = spec["identity"]["explanations"]
        items = [it for it in scoring_items(book, spec["kinds"]) if it[3] in set(want)]
        if [it[3] for it in items] != want:
            raise ScaleError(f"{spec['book']}: its explanations changed while scoring ran; re-run the command")
        R = resolver_for(book)
    finally:
        book.close()
    st = ScoreSettings(**spec["settings"])
    ho = collect(model, _stories(spec["corpus"], spec["stories"], spec.get("encoding")),
                 {(k, l) for k, l in spec["taps"]}, st)
    kill_at = kill_after(i, spec["out"])
    state = {"units": 0, "written": 0.0}

    def counted():
        for it in items:
            yield it
            state["units"] += 1
            now = time.time()
            if now - state["written"] >= PROGRESS_S:
                write_progress(spec["progress"], {"units": state["units"]})
                state["written"] = now
            if kill_at is not None and state["units"] >= kill_at:
                from .worker import kill_self

                kill_self(spec["out"], state["units"])

    scores, extra, l_orig = score_units(model, ho, counted(), R, st)
    out = {"identity": spec["identity"], "scores": [s.to_row() for s in scores], "forwards": ho.forwards + extra,
           "batches": ho.forwards, "ce_original": l_orig}
    tmp = Path(f"{spec['out']}.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, spec["out"])
    write_progress(spec["progress"], {"units": len(scores), "done": True})
    return {"units": len(scores)}
