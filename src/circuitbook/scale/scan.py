"""A scan scaled out: N shard jobs on an executor, retried, merged into one book identical to a single run.

    summary = scale_scan(model, {"model": path, "dtype": "fp32", "device": "cpu"}, corpus, "book.db",
                         settings, shards=4, executor="ray", opts=ExecutorOptions(cpus=2))

Shard i of n scans the corpus's batches j with j mod n == i (scan/run.py ``shard_batches``: every shard
forms the very batches a single run forms), into ``BOOK.shards/shard-i-of-n.db`` with its resumable state.
Before anything runs, every shard book already there is checked against the scan asked for (model,
corpus, settings): one that describes another scan is a ScaleError (nothing is touched) unless
``overwrite``. Finished shards are reused; unfinished ones resume from their last checkpoint. A round
submits the unfinished shards; a shard that fails (a crash, a SIGKILL, an exception) is submitted again in
the next round, at most ``retries`` times. When all are finished, ``merge_books`` writes the exact merge
into the book. The shard books stay (a re-run is then only the merge or nothing; delete BOOK.shards/ to
free the space). Progress: the workers' progress files, summed (tokens and tokens/s across shards).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..scan import ScanSettings, merge_books
from ..scan.run import _only_sources_differ, held_identity, resolve_settings, scan_identity
from .coordinate import Tracker, run_rounds, why_pending
from .executors import ExecutorOptions, ScaleError, make_executor


@dataclasses.dataclass
class ScaleSummary:
    book: str
    shards: int
    executor: str
    tokens: int
    sequences: int
    reused: int  # shards already finished before this run
    ran: int  # shard jobs submitted (retries included)
    failures: list[str]  # one line per failed attempt
    seconds: float
    tokens_per_s: float  # tokens scanned by this run / wall time, all shards together

    def __str__(self) -> str:
        retried = f", {len(self.failures)} failed attempt(s) retried" if self.failures else ""
        return (f"scanned {self.tokens:,} tokens in {self.sequences:,} sequences with {self.shards} shards on "
                f"{self.executor} ({self.reused} reused, {self.ran} jobs run{retried}) in {self.seconds:.1f}s "
                f"({self.tokens_per_s:,.0f} tok/s across shards) -> {self.book}")


def shards_dir(book: str | Path) -> Path:
    return Path(f"{book}.shards")


def shard_book(book: str | Path, i: int, n: int) -> Path:
    return shards_dir(book) / f"shard-{i}-of-{n}.db"


def _diff(have: dict, want: dict) -> str:
    keys = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    return ", ".join(f"{k} ({have.get(k)!r} there vs {want.get(k)!r} now)" for k in keys[:4])


def _check_book(book: Path, want: dict, overwrite: bool) -> bool:
    """True when ``book`` already holds this very scan, finished; ScaleError when it holds another one."""
    held = held_identity(book)
    if held is None:
        return False
    have, complete = held
    same = {k: v for k, v in have.items() if k != "shard"} == {k: v for k, v in want.items() if k != "shard"}
    if same and complete:
        return True
    if not overwrite and not _only_sources_differ({k: v for k, v in have.items() if k != "shard"},
                                                  {k: v for k, v in want.items() if k != "shard"}):
        raise ScaleError(f"{book} already holds a scan with different {_diff(have, want)}; "
                         f"use another book or --overwrite")
    return False


def _shard_state(path: Path, want: dict, overwrite: bool) -> str:
    """'done', 'pending' (absent, empty or a checkpoint to resume) or ScaleError for another scan's book."""
    held = held_identity(path)
    if held is None:
        return "pending"
    have, complete = held
    if have != want:
        if overwrite:
            return "pending"  # the worker replaces it
        raise ScaleError(f"shard book {path} is from another scan: {_diff(have, want)}; remove it (or pass "
                         f"--overwrite) to rescan that shard; the other shard books are kept")
    return "done" if complete else "pending"


def scale_scan(model, model_spec: dict, corpus, book: str | Path, settings: ScanSettings | None = None, *,
               shards: int, executor: str = "local", retries: int = 2, opts: ExecutorOptions | None = None,
               overwrite: bool = False, encoding: str | None = None, progress: bool = True,
               features: list | None = None) -> ScaleSummary:
    """Scan ``corpus`` in ``shards`` shard jobs on ``executor`` and merge them into ``book`` (module doc).

    ``model``: the loaded model (for the scan's identity); ``model_spec``: how a worker loads it (model,
    dtype, device); ``features``: names of ``book``'s dictionaries whose features the scan records too
    (every worker reads them from ``book``, read-only)."""
    if shards < 1:
        raise ScaleError(f"--shards {shards}: need at least 1")
    if retries < 0:
        raise ScaleError(f"--retries {retries}: need >= 0")
    s = resolve_settings(model, settings)
    if s.shard != (0, 1):
        raise ScaleError("--shards runs every shard itself: leave out --shard")
    book = Path(book)
    t0 = time.time()
    want = scan_identity(model, corpus, s, _sources(model, book, features))
    if _check_book(book, want, overwrite):
        return _finish(book, shards, executor, reused=shards, ran=0, failures=[], t0=t0, new_tokens=0)
    idents = {i: {**want, "shard": [i, shards]} for i in range(shards)}
    states = {i: _shard_state(shard_book(book, i, shards), idents[i], overwrite) for i in range(shards)}
    opts = dataclasses.replace(opts or ExecutorOptions(), folder=shards_dir(book))
    ex = make_executor(executor, opts)
    pending = [i for i in range(shards) if states[i] != "done"]
    reused, ran, failures = shards - len(pending), 0, []
    tracker = Tracker([_progress_file(book, i, shards) for i in range(shards)], "new_tokens",
                      f"scan {shards} shards on {executor}", "tok", enabled=progress)
    if pending:
        shards_dir(book).mkdir(parents=True, exist_ok=True)
        ex.start()
        try:
            tracker.start()
            ran, failures, pending = run_rounds(
                ex, pending, lambda i, attempt, jobs: {
                    **_spec(model_spec, corpus, encoding, s, book, i, shards, ex.threads(jobs), overwrite and attempt == 0),
                    "features": features or [], "dictionary_book": str(book)},
                lambda i: _shard_state(shard_book(book, i, shards), idents[i], False) == "done", retries, shards)
        finally:
            tracker.stop()
            ex.close()
    if pending:
        raise ScaleError(f"{len(pending)} of {shards} shards did not finish after {retries + 1} attempts: "
                         f"{why_pending(pending, failures, shards)}; the {shards - len(pending)} finished shard "
                         f"books are kept in {shards_dir(book)} (re-run the same command to retry the rest)")
    paths = [shard_book(book, i, shards) for i in range(shards)]
    for i, p in enumerate(paths):  # the last word before merging: every shard book there and finished
        if _shard_state(p, idents[i], False) != "done":
            raise ScaleError(f"shard book {p} is missing or unfinished; re-run the same command to rescan it")
    merge_books(paths, book, overwrite=True)
    return _finish(book, shards, executor, reused, ran, failures, t0, tracker.count())


def _spec(model_spec: dict, corpus, encoding, s: ScanSettings, book: Path, i: int, n: int, threads: int,
          overwrite: bool) -> dict:
    fields = {k: v for k, v in dataclasses.asdict(s).items() if k != "shard"}
    return {**model_spec, "corpus": str(corpus), "encoding": encoding, "settings": fields, "shard": [i, n],
            "book": str(shard_book(book, i, n)), "progress": str(_progress_file(book, i, n)),
            "threads": threads, "overwrite": overwrite, "fingerprint_threads": _torch_threads()}


def _sources(model, book: Path, features: list | None) -> tuple:
    """The scan sources of ``book``'s dictionaries ``features`` (what the coordinator and every worker build)."""
    if not features:
        return ()
    from ..book import Book
    from ..dictionary.scan import feature_sources

    b = Book.open(book, create=False, readonly=True)
    try:
        return feature_sources(model, b, list(features))
    finally:
        b.close()


def _progress_file(book: Path, i: int, n: int) -> Path:
    return Path(f"{shard_book(book, i, n)}.progress.json")


def _torch_threads() -> int:
    """The coordinator's torch thread count: the model fingerprint's float sums depend on it (model/load.py),
    so every worker takes the fingerprint with this many threads, whatever its executor gave it."""
    import torch

    return torch.get_num_threads()


def _finish(book: Path, shards: int, executor: str, reused: int, ran: int, failures: list[str], t0: float,
            new_tokens: int) -> ScaleSummary:
    from ..book import Book
    from ..book import scan as store

    b = Book.open(book, create=False, readonly=True)
    try:
        prog = store.load_state_row(b)[1]
    finally:
        b.close()
    sec = time.time() - t0
    return ScaleSummary(str(book), shards, executor, prog["tokens"], prog["sequences"], reused, ran, failures, sec,
                        new_tokens / sec if sec > 0 else 0.0)
