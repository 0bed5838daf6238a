"""Scale-out (scale/): a sharded scan on the local, Ray and submitit executors writes the very book a single
process writes (every scan table), a worker SIGKILLed mid-shard is retried, finished shards are reused, and
bad input (unreachable Ray, a shard book of another scan, a missing engine) is one clear error."""

from __future__ import annotations

import importlib.util

import pytest

from circuitbook.book import Book
from circuitbook.cli import main

from ..scan.conftest import dump

ARGS = ["--k", "4", "--r", "2", "--max-len", "64", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(stories_path, tmp_path_factory):
    from circuitbook.corpus import read_stories

    stories = []
    for s in read_stories(stories_path):
        stories.append(s)
        if len(stories) == 24:
            break
    p = tmp_path_factory.mktemp("corpus") / "stories.txt"
    p.write_text("\n<|endoftext|>\n".join(stories), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def ref(ts1l_dir, corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.db"
    assert main(["scan", str(ts1l_dir), "--corpus", str(corpus), "--book", str(path), *ARGS]) == 0
    return dump(Book.open(path))


def _scan(ts1l_dir, corpus, book, *extra):
    return main(["scan", str(ts1l_dir), "--corpus", str(corpus), "--book", str(book), *ARGS, *extra])


def test_local_executor_with_a_killed_worker_equals_one_process(ts1l_dir, corpus, ref, tmp_path, monkeypatch,
                                                                capsys):
    book = tmp_path / "local.db"
    monkeypatch.setenv("CIRCUITBOOK_SCALE_KILL", "1@1")  # shard 1 SIGKILLs itself after its first batch, once
    assert _scan(ts1l_dir, corpus, book, "--shards", "4", "--executor", "local", "--workers", "2") == 0
    out = capsys.readouterr().out
    assert "failed attempt" in out, out
    assert dump(Book.open(book)) == ref
    monkeypatch.delenv("CIRCUITBOOK_SCALE_KILL")
    book.unlink()  # the re-run only merges the finished shards again
    assert _scan(ts1l_dir, corpus, book, "--shards", "4", "--executor", "local") == 0
    assert "4 reused" in capsys.readouterr().out
    assert dump(Book.open(book)) == ref


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the [ray] extra is not installed")
def test_ray_executor_with_a_killed_worker_equals_one_process(ts1l_dir, corpus, ref, tmp_path, monkeypatch,
                                                              capsys):
    book = tmp_path / "ray.db"
    monkeypatch.setenv("CIRCUITBOOK_SCALE_KILL", "2@1")
    assert _scan(ts1l_dir, corpus, book, "--shards", "4", "--executor", "ray", "--ray-cpus", "2") == 0
    assert "failed attempt" in capsys.readouterr().out
    assert dump(Book.open(book)) == ref


@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="the [slurm] extra is not installed")
def test_slurm_executor_on_submitits_local_executor(ts1l_dir, corpus, ref, tmp_path):
    book = tmp_path / "slurm.db"
    assert _scan(ts1l_dir, corpus, book, "--shards", "2", "--executor", "slurm", "--slurm-local") == 0
    assert dump(Book.open(book)) == ref


def test_bad_input_is_one_clear_error_and_keeps_finished_shards(ts1l_dir, corpus, tmp_path, capsys):
    book = tmp_path / "b.db"
    assert _scan(ts1l_dir, corpus, book, "--shards", "2", "--executor", "ray",
                 "--ray-address", "127.0.0.1:9") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "127.0.0.1:9" in err and "Traceback" not in err
    assert not book.exists()
    assert _scan(ts1l_dir, corpus, book, "--shards", "2", "--executor", "local") == 0
    shards = sorted(p.name for p in (tmp_path / "b.db.shards").glob("*.db"))
    assert shards == ["shard-0-of-2.db", "shard-1-of-2.db"]
    before = {p: p.read_bytes() for p in (tmp_path / "b.db.shards").glob("*.db")}
    capsys.readouterr()
    book.unlink()
    # shard books of another scan (k differs): refused, nothing touched
    assert main(["scan", str(ts1l_dir), "--corpus", str(corpus), "--book", str(book), "--k", "5", "--r", "2",
                 "--max-len", "64", "--batch-size", "4", "--no-progress", "--shards", "2",
                 "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in before} == before and not book.exists()
    assert _scan(ts1l_dir, corpus, book, "--shards", "2", "--shard", "1/2", "--executor", "local") == 2


def test_executor_registry_refuses_a_duplicate_and_matches_the_cli():
    from circuitbook.cli.scan import EXECUTOR_NAMES
    from circuitbook.scale import EXECUTORS, ScaleError, register_executor

    assert set(EXECUTOR_NAMES) == set(EXECUTORS)  # the CLI lists them without importing the engines' module
    with pytest.raises(ScaleError, match="already registered"):
        register_executor("local")(type("Again", (), {}))
