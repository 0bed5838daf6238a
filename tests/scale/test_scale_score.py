"""Explanation scoring scaled out (scale/score.py): `circuitbook score --shards N --executor local|ray` stores
the very scores one process stores (every explanation_scores figure), a worker SIGKILLed mid-shard is retried,
finished shard files are reused, and the shard files are gone once the run is stored."""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3

import pytest

from circuitbook.cli import main


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """A demo model, a book scanned and explained on its first stories, the rest held out."""
    from circuitbook.demo import build_demo

    demo = build_demo(d_mlp=32, n_stories=90)
    d = tmp_path_factory.mktemp("scalescore")
    m = demo.write(d / "model")
    (d / "fit.txt").write_text("\n<|endoftext|>\n".join(demo.stories[:60]) + "\n")
    (d / "held.txt").write_text("\n<|endoftext|>\n".join(demo.stories[60:]) + "\n")
    book = d / "explained.db"
    assert main(["scan", str(m), "--corpus", str(d / "fit.txt"), "--book", str(book), "--k", "8",
                 "--no-progress"]) == 0
    assert main(["explain", str(book), "--model", str(m)]) == 0
    return d, m, book


def _scores(path) -> list[tuple]:
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = sorted(c.execute("SELECT explanation_id, simulation, detection, ablation, carry, n_windows "
                            "FROM explanation_scores"))
    c.close()
    return rows


def _score(explained, tmp_path, name, *extra) -> tuple:
    d, m, book = explained
    b = tmp_path / f"{name}.db"
    shutil.copy(book, b)
    rc = main(["score", str(b), "--corpus", str(d / "held.txt"), "--model", str(m), "--ablation-tokens", "128",
               *extra])
    return rc, b


@pytest.fixture(scope="module")
def single(explained, tmp_path_factory):
    rc, b = _score(explained, tmp_path_factory.mktemp("single"), "single")
    assert rc == 0
    rows = _scores(b)
    assert len(rows) >= 8 and any(r[3] is not None for r in rows)  # neurons and heads, ablation scores too
    return rows


def test_local_shards_with_a_killed_worker_store_the_same_scores(explained, single, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRCUITBOOK_SCALE_KILL", "1@2")  # shard 1 SIGKILLs itself after its second unit, once
    rc, b = _score(explained, tmp_path, "local", "--shards", "3", "--executor", "local", "--workers", "2")
    assert rc == 0
    out = capsys.readouterr().out
    assert "retried: shard 1/3 (attempt 1): killed by SIGKILL" in out, out
    assert _scores(b) == single
    assert not (tmp_path / "local.db.score-shards").exists()  # stored, then removed


def test_finished_shards_are_reused(explained, single, tmp_path, monkeypatch, capsys):
    """Shard 0 always dies: the run fails naming it and keeps shard 1's file; the re-run reuses that file."""
    monkeypatch.setenv("CIRCUITBOOK_SCALE_KILL", "0@1")
    rc, b = _score(explained, tmp_path, "reuse", "--shards", "2", "--retries", "0")
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 2 score shards did not finish" in err and "killed by SIGKILL" in err, err
    assert (tmp_path / "reuse.db.score-shards" / "shard-1-of-2.json").exists() and not _scores(b)
    monkeypatch.delenv("CIRCUITBOOK_SCALE_KILL")
    assert main(["score", str(b), "--corpus", str(explained[0] / "held.txt"), "--model", str(explained[1]),
                 "--ablation-tokens", "128", "--shards", "2"]) == 0
    assert "1 reused, 1 jobs run" in capsys.readouterr().out
    assert _scores(b) == single


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the [ray] extra is not installed")
def test_ray_shards_store_the_same_scores(explained, single, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRCUITBOOK_SCALE_KILL", "0@1")
    rc, b = _score(explained, tmp_path, "ray", "--shards", "2", "--executor", "ray", "--ray-cpus", "2")
    assert rc == 0
    assert "retried: shard 0/2 (attempt 1)" in capsys.readouterr().out
    assert _scores(b) == single
