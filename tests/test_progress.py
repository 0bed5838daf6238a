"""circuitbook.progress: tqdm on a terminal; on a non-terminal, plain lines at a bounded rate (every 30 s
or every 10% of the total, whichever is later) and one summary line, never a carriage return."""

from __future__ import annotations

import io

from tqdm import tqdm

from circuitbook.progress import LineProgress, progress


class Clock:
    """A fake monotonic clock: reads return ``t``, which the test advances by hand."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(total, step, n_updates, per_update=1, postfix=None):
    clock, out = Clock(), io.StringIO()
    bar = progress(total=total, desc="work", unit=" batch", stream=out, clock=clock)
    assert isinstance(bar, LineProgress)
    for i in range(n_updates):
        clock.t += step
        bar.update(per_update)
        if postfix:
            bar.set_postfix_str(postfix(i))
    bar.close()
    bar.close()  # idempotent
    return out.getvalue()


def test_time_bound_when_slow_per_fraction():
    # 1 s per item, 100 items: 10% comes every 10 s, 30 s is later -> lines at t = 30, 60, 90, then the summary
    text = _run(100, 1.0, 100)
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 4
    assert [ln.split(":")[1].split()[0] for ln in lines[:3]] == ["30/100", "60/100", "90/100"]
    assert lines[-1].startswith("work: 100/100 batch (100%), done in 1m40s")


def test_fraction_bound_when_fast_in_time():
    # 10 s per item: 30 s passes every 3 items, 10% (10 items) is later -> n = 10, 20, ..., 90, then the summary
    lines = _run(100, 10.0, 100).splitlines()
    assert [ln.split(":")[1].split()[0] for ln in lines[:-1]] == [f"{n}/100" for n in range(10, 100, 10)]
    assert "done in" in lines[-1] and "(100%)" in lines[-1]


def test_many_updates_stay_few_lines_and_postfix_shows():
    text = _run(10**6, 0.05, 10**4, per_update=100, postfix=lambda i: f"loss {i}")
    lines = text.splitlines()
    assert "\r" not in text and 2 <= len(lines) <= 11  # at most 1/fraction lines + the summary
    assert lines[-1].endswith("loss 9999") and "1000000/1000000" in lines[-1]


def test_unknown_total_is_time_bound():
    lines = _run(None, 1.0, 100).splitlines()
    assert [ln.split(":")[1].split()[0] for ln in lines] == ["30", "60", "90", "100"]
    assert "%" not in "".join(lines)


def test_iterating_counts_and_summarises():
    out, clock = io.StringIO(), Clock()
    seen = []
    for x in progress(range(7), desc="pages", unit="page", stream=out, clock=clock):
        clock.t += 2.0
        seen.append(x)
    assert seen == list(range(7))
    assert out.getvalue() == "pages: 7/7 page (100%), done in 14.0s, 0.5 page/s\n"


def test_disabled_is_silent_and_tty_is_tqdm():
    out = io.StringIO()
    bar = progress(range(3), desc="x", enabled=False, stream=out)
    assert list(bar) == [0, 1, 2] and out.getvalue() == ""
    tty = TTY()
    bar = progress(range(3), desc="x", stream=tty)
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2] and "\r" in tty.getvalue()  # the terminal keeps tqdm's redrawn bar
