"""Two writers of one book: the second refuses (or waits) with a message naming the holder; nothing is lost."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from circuitbook.book.core import BookLockedError, lock_path, write_lock

SRC = Path(__file__).resolve().parents[2] / "src"


def test_second_writer_refuses_naming_the_holder(tmp_path):
    book = tmp_path / "b.db"
    with write_lock(book, "circuitbook scan"):
        assert lock_path(book).exists()
        with pytest.raises(BookLockedError, match=rf"b.db is being written by another process \(pid {os.getpid()}: "
                                                  r"circuitbook scan, since .* UTC\)"):
            with write_lock(book, "circuitbook circuits"):
                pass
    assert not lock_path(book).exists()  # released and removed
    with write_lock(book):  # free again
        pass


def test_waiting_writer_gets_the_lock_when_released(tmp_path):
    book = tmp_path / "b.db"
    order = []
    held = threading.Event()

    def first():
        with write_lock(book, "first"):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with write_lock(book, "second", wait=30):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]


def test_a_stale_lock_file_does_not_block(tmp_path):
    """A SIGKILLed holder leaves its file; the kernel released its flock, so the next writer proceeds."""
    book = tmp_path / "b.db"
    lock_path(book).write_text('{"pid": 999999, "what": "killed", "since": 0}')
    with write_lock(book, "next"):
        pass
    assert not lock_path(book).exists()


HOLDER = r"""
import contextlib, os, sys, time
from pathlib import Path
from circuitbook.book import core

orig, n = core.Book.transaction, [0]
ready, go = Path(os.environ["CB_READY"]), Path(os.environ["CB_GO"])

@contextlib.contextmanager
def transaction(self):
    with orig(self) as c:
        yield c
    n[0] += 1
    if n[0] == 4:  # mid-run: tell the test, then wait for it
        ready.touch()
        while not go.exists():
            time.sleep(0.05)

core.Book.transaction = transaction
from circuitbook.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_writing_one_book(tmp_path, capsys):
    from circuitbook.cli import main
    from circuitbook.demo import build_demo

    d = build_demo(d_mlp=16, n_stories=20).write(tmp_path / "demo")
    book = tmp_path / "b.db"
    argv = ["circuits", str(d), "--book", str(book), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(SRC), CB_READY=str(tmp_path / "ready"), CB_GO=str(tmp_path / "go"))
    first = subprocess.Popen([sys.executable, "-c", HOLDER, *argv], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "ready").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        capsys.readouterr()
        assert main(argv) == 2  # the second writer refuses, writing nothing
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "b.db is being written by another process" in err[0] and \
            f"pid {first.pid}: circuitbook circuits" in err[0], err
        assert main(["type", str(d), "--book", str(book), "--corpus", str(d / "stories.txt")]) == 2
        capsys.readouterr()
    finally:
        (tmp_path / "go").touch()
        out, errs = first.communicate(timeout=300)
    assert first.returncode == 0, errs[-2000:]
    assert not lock_path(book).exists()

    ref = tmp_path / "ref.db"
    assert main(["circuits", str(d), "--book", str(ref), "--no-progress"]) == 0
    c, r = sqlite3.connect(book), sqlite3.connect(ref)
    tasks = lambda x: sorted(t for (t,) in x.execute("SELECT task FROM circuit_done"))  # noqa: E731
    assert tasks(c) == tasks(r) and len(tasks(c)) > 4  # the first run finished every task
    assert c.execute("SELECT stage, status FROM runs").fetchall() == [("circuits", "done")]  # one run only
    assert main(argv) == 0  # once the first is done, the book is free
