"""Every long job survives SIGKILL: killed at random points and re-run, it ends with the same book.

Each job (``circuits``, ``type``, ``handcraft``) runs as a real subprocess (``python -c KILLER``: the CLI with a
hook on ``Book.transaction``) that SIGKILLs itself at a chosen point: inside the n-th write transaction
(after its statements, before COMMIT: SQLite must discard it) or just after the n-th commit (while the next
piece of work is being computed); for dictionary training also inside / after the n-th checkpoint save
(inside: a half-written temporary checkpoint is left behind). Points are drawn with a seeded RNG over the uninterrupted run's
transactions. A chain of killed runs on the same book, then one run to the end, must leave every table
(timestamps of runs aside) equal to the book of one uninterrupted run, and no lock file behind.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

KILLER = r"""
import contextlib, os, signal, sys
from circuitbook.book import core

mode, n, log = os.environ.get("CB_KILL_MODE", ""), int(os.environ.get("CB_KILL_N", "0")), os.environ["CB_LOG"]
orig, count = core.Book.transaction, [0]

@contextlib.contextmanager
def transaction(self):
    with orig(self) as c:
        count[0] += 1
        with open(log, "w") as f:
            f.write(str(count[0]))
        yield c
        if mode == "inside" and count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    if mode == "after" and count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)

core.Book.transaction = transaction

from circuitbook.dictionary import trainer  # dictionary training's checkpoints are kill points too
orig_save = trainer._save

def _save(path, *a):
    count[0] += 1
    with open(log, "w") as f:
        f.write(str(count[0]))
    if mode == "inside" and count[0] == n:  # half-written temporary checkpoint, then dead
        with open(str(path) + ".tmp", "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    orig_save(path, *a)
    if mode == "after" and count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)

trainer._save = _save
from circuitbook.cli import main
sys.exit(main(sys.argv[1:]))
"""

# columns that hold wall-clock times (the only thing allowed to differ between two runs)
TIMES = {"runs": None, "handcraft_evals": {"created"}, "circuit_done": {"at"}, "dictionaries": {"created"},
         "dictionary_metrics": {"created"}, "explanation_scores": {"at"}}
# keys of JSON columns that hold wall-clock figures or how many processes a job took: dictionaries.settings'
# "trained" summary records this process's seconds, tokens/s and the step it resumed from
JSON_TIMES = {("dictionaries", "settings"): ("trained", ("seconds", "tokens_per_s", "resumed_from"))}


def _strip(table: str, col: str, value):
    if (table, col) not in JSON_TIMES or value is None:
        return value
    key, drop = JSON_TIMES[(table, col)]
    d = json.loads(value)
    for k in drop:
        d.get(key, {}).pop(k, None)
    return json.dumps(d, sort_keys=True)


def dump(path: Path) -> dict:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out = {}
    for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
        if t in TIMES and TIMES[t] is None:
            continue
        cols = [r[1] for r in c.execute(f"PRAGMA table_info({t})") if r[1] not in (TIMES.get(t) or ())]
        out[t] = sorted(tuple(_strip(t, col, v) for col, v in zip(cols, r))
                        for r in c.execute(f"SELECT {', '.join(cols)} FROM {t}"))
    c.close()
    return out


def run(argv, tmp: Path, mode: str = "", n: int = 0):
    env = dict(os.environ, PYTHONPATH=str(SRC), CB_KILL_MODE=mode, CB_KILL_N=str(n), CB_LOG=str(tmp / "count"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CIRCUITBOOK_MALLOC_TUNING="0")
    p = subprocess.run([sys.executable, "-c", KILLER, *argv], env=env, capture_output=True, text=True, timeout=600)
    count = int((tmp / "count").read_text()) if (tmp / "count").exists() else 0
    (tmp / "count").unlink(missing_ok=True)
    return p, count


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from circuitbook.demo import build_demo

    d = build_demo(d_mlp=32, n_stories=60)
    out = d.write(tmp_path_factory.mktemp("killdemo"))
    spec = {"name": "planted", "neurons": [
        {"name": k, "replaces": d.truth[k], "input": {"ids": d.truth["rules"][k]["reads"]},
         "output": {"promote": {"ids": d.truth["rules"][k]["writes"]}}, "strength": 4, "bias": -2, "gain": 2}
        for k in ("pronoun_verb", "search")]}
    (out / "spec.json").write_text(json.dumps(spec))
    return out


JOBS = {
    "circuits": lambda d, b, o: ["circuits", str(d), "--book", str(b), "--corpus", str(d / "stories.txt"),
                                 "--stories", "20", "--no-progress"],
    "type": lambda d, b, o: ["type", str(d), "--book", str(b), "--corpus", str(d / "stories.txt")],
    "handcraft": lambda d, b, o: ["handcraft", str(d / "spec.json"), "--model", str(d), "--corpus",
                                  str(d / "stories.txt"), "--book", str(b), "--stories", "30", "--batch-size", "16",
                                  "--save-model", str(o)],
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_sigkill_at_random_points_then_resume_gives_the_same_book(job, demo_dir, tmp_path):
    ref, ref_out = tmp_path / "ref.db", tmp_path / "ref-model"
    p, total = run(JOBS[job](demo_dir, ref, ref_out), tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert total >= 3

    book, out = tmp_path / "killed.db", tmp_path / "killed-model"
    rng = random.Random(f"{job}-kills")
    kills, done = [], 0  # done: transactions of the uninterrupted run already committed, roughly
    for reach in (0.4, 0.7, 1.0):  # early, middle, anywhere in what is left
        mode, n = rng.choice(["inside", "after"]), 1 + int(rng.random() * reach * max(2, total - done))
        p, reached = run(JOBS[job](demo_dir, book, out), tmp_path, mode, n)
        kills.append((mode, n, p.returncode))
        assert p.returncode in (0, -9), p.stderr[-2000:]
        done += max(0, reached - 1 - (mode == "inside"))  # each run first re-opens the book (one transaction)
    assert sum(rc == -9 for *_, rc in kills) >= 2, kills  # most runs really were killed
    p, _ = run(JOBS[job](demo_dir, book, out), tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]

    print(f"{job}: {total} transactions uninterrupted; kills (mode, n, exit code): {kills}")
    assert dump(book) == dump(ref), kills
    assert not Path(f"{book}.lock").exists() and not Path(f"{ref}.lock").exists()
    if job == "handcraft":
        assert len(dump(book)["handcraft_evals"]) == 1
        for f in ("model.safetensors", "config.json"):
            assert (out / f).read_bytes() == (ref_out / f).read_bytes()


DICT_TRAIN = lambda d, b: ["dictionary", "train", str(d), "--corpus", str(d / "stories.txt"), "--book", str(b),  # noqa: E731
                           "--features", "64", "--k", "4", "--tokens", "1024", "--batch-size", "64",
                           "--checkpoint-every", "2", "--holdout", "10", "--no-progress"]


def test_dictionary_train_sigkill_at_random_points_then_resume_gives_the_same_book(demo_dir, tmp_path):
    """Kill points: the book's transactions (open, bind, the one that stores dictionary + measurement) and
    every checkpoint save (16 steps, one every 2); the logs of the last steps are in the checkpoint, so the
    stored summary (FVU, L0) of a resumed run matches too."""
    ref = tmp_path / "ref.db"
    p, total = run(DICT_TRAIN(demo_dir, ref), tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert total >= 8
    book = tmp_path / "killed.db"
    rng = random.Random("dictionary-kills")
    kills = []
    for reach in (0.4, 0.7, 1.0):
        mode, n = rng.choice(["inside", "after"]), 1 + int(rng.random() * reach * total)
        p, reached = run(DICT_TRAIN(demo_dir, book), tmp_path, mode, n)
        kills.append((mode, n, p.returncode))
        assert p.returncode in (0, -9), p.stderr[-2000:]
        if p.returncode == 0:
            break
    assert sum(rc == -9 for *_, rc in kills) >= 2, kills
    if kills[-1][2] == -9:
        p, _ = run(DICT_TRAIN(demo_dir, book), tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
    print(f"dictionary train: {total} kill points uninterrupted; kills (mode, n, exit code): {kills}")
    assert dump(book) == dump(ref), kills
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.lock")), list(tmp_path.iterdir())


def test_dictionary_train_killed_after_storing_finishes_on_rerun(demo_dir, tmp_path):
    """Killed just after the transaction that stores the dictionary (its checkpoint still on disk): the
    re-run removes the checkpoint and stores nothing twice."""
    ref = tmp_path / "ref.db"
    p, total = run(DICT_TRAIN(demo_dir, ref), tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    book = tmp_path / "killed.db"
    p, _ = run(DICT_TRAIN(demo_dir, book), tmp_path, "after", total)  # the last kill point: the store
    assert p.returncode == -9 and list(tmp_path.glob("killed.db.*.pt")), p.stderr[-2000:]
    p, _ = run(DICT_TRAIN(demo_dir, book), tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert dump(book) == dump(ref) and not list(tmp_path.glob("*.pt"))


@pytest.fixture(scope="module")
def explained(demo_dir, tmp_path_factory):
    """A scanned, explained book of the demo (first 30 stories) and a held-out corpus (the other 30)."""
    from circuitbook.corpus import SEPARATOR, read_stories

    d = tmp_path_factory.mktemp("explained")
    book = d / "base.db"
    stories = list(read_stories(demo_dir / "stories.txt"))
    for name, part in (("scanned.txt", stories[:30]), ("heldout.txt", stories[30:])):
        (d / name).write_text(f"\n{SEPARATOR}\n".join(part) + "\n")
    for argv in (["scan", str(demo_dir), "--corpus", str(d / "scanned.txt"), "--book", str(book), "--no-progress"],
                 ["explain", str(book), "--no-typing-gate"]):
        p, _ = run(argv, d)
        assert p.returncode == 0, p.stderr[-2000:]
    return book, d / "heldout.txt"


def test_score_sigkill_at_random_points_then_resume_gives_the_same_book(explained, tmp_path):
    """Kill points: every transaction of `circuitbook score` (open, label import, each journal write of 4
    finished units, the one that stores the run and empties the journal)."""
    import shutil

    base, held = explained
    ref, book = tmp_path / "ref.db", tmp_path / "killed.db"
    shutil.copy(base, ref)
    shutil.copy(base, book)
    argv = lambda b: ["score", str(b), "--corpus", str(held), "--checkpoint-every", "4"]  # noqa: E731
    p, total = run(argv(ref), tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert total >= 6, total
    rng = random.Random("score-kills")
    p, _ = run(argv(book), tmp_path, "after", total // 2)  # mid-scoring: some scores journaled
    kills = [("after", total // 2, p.returncode)]
    c = sqlite3.connect(f"file:{book}?mode=ro", uri=True)
    journaled = c.execute("SELECT count(*) FROM score_journal").fetchone()[0]
    c.close()
    assert p.returncode == -9 and journaled > 0, (p.returncode, journaled)
    for reach in (0.5, 1.0):  # then anywhere in what is left (the resumed run has fewer journal writes)
        mode, n = rng.choice(["inside", "after"]), 1 + int(rng.random() * reach * (total - total // 2 + 2))
        p, _ = run(argv(book), tmp_path, mode, n)
        kills.append((mode, n, p.returncode))
        assert p.returncode in (0, -9), p.stderr[-2000:]
        if p.returncode == 0:
            break
    if kills[-1][2] == -9:
        p, _ = run(argv(book), tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
    print(f"score: {total} transactions uninterrupted; kills (mode, n, exit code): {kills}")
    got, want = dump(book), dump(ref)
    assert got == want, kills
    assert len(want["explanation_scores"]) >= 20 and not want["score_journal"]
    c = sqlite3.connect(f"file:{book}?mode=ro", uri=True)
    (summary,), = c.execute("SELECT summary FROM runs WHERE stage = 'score'").fetchall()  # one score run
    c.close()
    assert json.loads(summary).get("resumed", 0) >= journaled  # the stored run did resume from the journal
