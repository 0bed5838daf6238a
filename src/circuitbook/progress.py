"""Progress bars that behave in a terminal and in a log.

    for b in progress(batches, desc="evaluate", unit="batch", enabled=show):
        ...
    bar = progress(total=n, desc="scan", unit="tok"); bar.update(k); bar.set_postfix_str("..."); bar.close()

On a terminal (stderr is a TTY) or in a Jupyter kernel this is ``tqdm.auto.tqdm``, exactly as before. When
stderr is not a TTY (CI logs, ``| tee``, a pipe) tqdm would print one carriage-return frame per refresh,
hundreds of them; instead :class:`LineProgress` prints plain lines, never a carriage return:

* at most one line per interval: when both ``interval`` seconds (30) have passed AND ``fraction`` (10%)
  of ``total`` has been done since the last line (whichever comes later; with no total, time alone);
* one summary line when the bar closes (count, elapsed time, rate and the last postfix).

So a run prints at most ``1 / fraction`` progress lines plus the summary, however long it is.
``enabled=False`` gives a silent bar (tqdm's ``disable=True``) with the same interface.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, TextIO

INTERVAL_S = 30.0
FRACTION = 0.1


def progress(iterable: Iterable | None = None, *, total: int | float | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, stream: TextIO | None = None,
             interval: float = INTERVAL_S, fraction: float = FRACTION,
             clock: Callable[[], float] = time.monotonic) -> Any:
    """A tqdm-like bar (iterate it, or call ``update(n)`` / ``set_postfix_str(s)`` / ``close()``).

    ``total``: the expected count (default ``len(iterable)`` when it has one); ``stream``: where it writes
    (default ``sys.stderr``); ``interval``/``fraction``/``clock``: the non-terminal line rate (see the module
    docstring; ``clock`` is injectable for tests)."""
    from tqdm.auto import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    out = stream if stream is not None else sys.stderr
    if _is_tty(out) or _in_notebook():
        return tqdm(iterable, total=total, desc=desc, unit=unit, **({"file": stream} if stream is not None else {}))
    return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=out, interval=interval,
                        fraction=fraction, clock=clock)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (tqdm.auto draws a widget there; its stderr is no TTY)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m{s:02d}s"


class LineProgress:
    """The non-terminal bar: plain lines at a bounded rate and a summary on close (see the module docstring)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | float | None = None, desc: str = "",
                 unit: str = "it", stream: TextIO | None = None, interval: float = INTERVAL_S,
                 fraction: float = FRACTION, clock: Callable[[], float] = time.monotonic):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit.strip() or "it"
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.fraction, self.clock = interval, fraction, clock
        self.n = 0
        self.postfix = ""
        self.start = self._last_t = clock()
        self._last_n = 0
        self.closed = False

    def __iter__(self):
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last_t < self.interval:
            return
        if self.total:
            if self.n >= self.total or self.n - self._last_n < self.fraction * self.total:
                return  # done (the summary follows) or not yet another fraction of the total
        self._write(self._status(now))
        self._last_t, self._last_n = now, self.n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are written by :meth:`update` and :meth:`close` only."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        self._write(self._status(now, done=True))

    def _status(self, now: float, done: bool = False) -> str:
        elapsed = max(now - self.start, 0.0)
        count = f"{self._num(self.n)}/{self._num(self.total)}" if self.total else self._num(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        head = f"{self.desc}: " if self.desc else ""
        tail = f", {self.postfix}" if self.postfix else ""
        when = f"done in {_duration(elapsed)}" if done else f"{_duration(elapsed)} elapsed"
        return f"{head}{count} {self.unit}{pct}, {when}{rate}{tail}"

    @staticmethod
    def _num(x) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:.4g}"

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line.replace("\r", " ") + "\n")
            self.stream.flush()
        except ValueError:  # the stream was closed under us (interpreter shutdown): progress is optional
            pass
