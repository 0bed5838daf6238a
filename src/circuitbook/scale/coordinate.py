"""What every scaled-out job's coordinator shares: rounds of shard jobs with bounded retries, and one progress
bar summed over the workers' progress files.

    ran, failures, pending = run_rounds(ex, pending, spec_of, done, retries, n)

A round submits the spec of every pending shard (``spec_of(i, attempt, jobs in this round)``) to the executor; afterwards a shard
counts as finished only when ``done(i)`` says so (its output is there and is the right one), whatever the
executor reported: a shard that failed is submitted again next round, at most ``retries`` times. The caller
raises (keeping the finished shards) when some are still pending.

Progress files: a worker rewrites a small JSON object (``{KEY: count, ...}``) at most every few tenths of a
second; a count that goes down means the shard started again (a retry), and the earlier attempts' counts are
kept in the sum.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

from .executors import Executor


def run_rounds(ex: Executor, pending: list[int], spec_of: Callable[[int, int, int], dict], done: Callable[[int], bool],
               retries: int, n: int) -> tuple[int, list[str], list[int]]:
    """Run the pending shards in at most ``retries + 1`` rounds: (jobs run, one line per failed attempt, still
    pending)."""
    ran, failures = 0, []
    for attempt in range(retries + 1):
        specs = [spec_of(i, attempt, len(pending)) for i in pending]
        errs = ex.run(specs)
        ran += len(specs)
        failures += [f"shard {i}/{n} (attempt {attempt + 1}): {e}" for i, e in zip(pending, errs) if e]
        pending = [i for i in pending if not done(i)]
        if not pending:
            break
    return ran, failures, pending


def why_pending(pending: list[int], failures: list[str], n: int) -> str:
    """The last failure of every shard still pending, '; '-joined (for the error the coordinator raises)."""
    last = {f.split(" (attempt")[0]: f for f in failures}
    return "; ".join(last.get(f"shard {i}/{n}", f"shard {i}/{n}: no finished output") for i in pending)


class Tracker:
    """Sums the workers' progress files (``paths``, counts under ``key``) into one bar: done by this run, and
    the rate across shards."""

    def __init__(self, paths: list[Path], key: str, desc: str, unit: str, enabled: bool, every: float = 1.0):
        self.paths, self.key, self.desc, self.unit, self.enabled, self.every = paths, key, desc, unit, enabled, every
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.time()
        self._lock = threading.Lock()
        self._last: dict[int, int] = {}  # per shard: the count of its current attempt
        self._acc: dict[int, int] = {}  # and of its earlier attempts (a retry starts again from 0)

    def _poll(self) -> int:
        with self._lock:
            for i, p in enumerate(self.paths):
                try:
                    new = int(json.loads(Path(p).read_text()).get(self.key, 0))
                except (OSError, ValueError):
                    continue
                if new < self._last.get(i, 0):
                    self._acc[i] = self._acc.get(i, 0) + self._last[i]
                self._last[i] = new
            return sum(self._last.values()) + sum(self._acc.values())

    def count(self) -> int:
        return self._poll()

    def start(self) -> None:
        for p in self.paths:  # progress of earlier runs is not this run's
            Path(p).unlink(missing_ok=True)
        self._t0 = time.time()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="scale-progress", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        from ..progress import progress as progress_bar

        bar = progress_bar(total=None, unit=self.unit, desc=self.desc)
        try:
            while not self._stop.wait(self.every):
                done = self._poll()
                bar.update(done - bar.n)
                bar.set_postfix_str(f"{done / max(time.time() - self._t0, 1e-9):,.1f} {self.unit}/s across shards",
                                    refresh=False)
        finally:
            bar.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
