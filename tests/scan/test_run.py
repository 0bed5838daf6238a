"""End to end: batch-size invariance, SIGKILL + resume, shards + merge, refusals, CLI."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from circuitbook.book import Book, BookError
from circuitbook.cli import main
from circuitbook.corpus import CorpusError
from circuitbook.model import load_model
from circuitbook.scan import ScanError, merge_books, scan_corpus

from .conftest import dump

ARGS = dict(max_len=32, k=6, r=2, before=4, after=2)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def ref(model, stories_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.db"
    summary = scan_corpus(model, stories_file, path, batch_size=5, progress=False, **ARGS)
    assert summary.complete and summary.tokens > 3000
    return dump(Book.open(path))


def test_rerun_and_other_batch_size(model, stories_file, ref, tmp_path):
    path = tmp_path / "b.db"
    scan_corpus(model, stories_file, path, batch_size=5, progress=False, **ARGS)
    assert dump(Book.open(path)) == ref  # deterministic
    again = scan_corpus(model, stories_file, path, batch_size=5, progress=False, **ARGS)
    assert again.new_tokens == 0 and again.complete  # already done: nothing rescanned
    with pytest.raises(ScanError, match="batch_size"):  # the batch size is part of a scan's identity
        scan_corpus(model, stories_file, path, batch_size=2, progress=False, **ARGS)
    # another batch size changes activations by float noise only
    other = tmp_path / "c.db"
    scan_corpus(model, stories_file, other, batch_size=2, progress=False, **ARGS)
    a, b = dump(Book.open(other)), ref
    assert [r[:3] for r in a["scan_neurons"]] == [r[:3] for r in b["scan_neurons"]]
    for x, y in zip(a["scan_neurons"], b["scan_neurons"]):
        assert x[3:8] == pytest.approx(y[3:8], rel=1e-4, abs=1e-6)


def _scan_cmd(tiny_dir, stories_file, path):
    return [sys.executable, "-m", "circuitbook.cli", "scan", str(tiny_dir), "--corpus", str(stories_file),
            "--book", str(path), "--batch-size", "5", "--checkpoint-every", "1", "--checkpoint-seconds", "0",
            "--no-progress", "--max-len", "32", "--k", "6", "--r", "2", "--before", "4", "--after", "2"]


def test_sigkill_then_resume_gives_the_same_book(tiny_dir, stories_file, tmp_path):
    # the reference is an uninterrupted run of the same command in a fresh process: the in-process `ref`
    # runs under whatever torch thread count earlier tests left, and float sums differ across thread counts
    whole = tmp_path / "whole.db"
    r = subprocess.run(_scan_cmd(tiny_dir, stories_file, whole), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = dump(Book.open(whole))
    path = tmp_path / "killed.db"
    cmd = _scan_cmd(tiny_dir, stories_file, path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            row = sqlite3.connect(path, timeout=1).execute("SELECT progress FROM scan_state").fetchone()
        except sqlite3.Error:
            row = None
        if row and '"sequences": ' in row[0] and '"sequences": 0,' not in row[0]:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = row[0]
            break
        time.sleep(0.02)
    assert killed_at is not None, f"scan ended before it could be killed: {proc.stderr.read()[-2000:]}"
    b = Book.open(path)
    state = b.conn.execute("SELECT complete FROM scan_state").fetchone()
    assert state[0] == 0  # killed mid-way, a checkpoint on disk
    b.close()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(resumed)" in r.stdout
    assert dump(Book.open(path)) == ref


def test_shards_merge_to_the_single_run_book(model, stories_file, ref, tmp_path):
    shards = []
    for i in range(3):
        p = tmp_path / f"s{i}.db"
        scan_corpus(model, stories_file, p, batch_size=5, shard=(i, 3), progress=False, **ARGS)
        shards.append(p)
    with pytest.raises(ScanError, match="missing"):
        merge_books(shards[:2], tmp_path / "partial.db")
    assert main(["merge", *map(str, shards), "--book", str(tmp_path / "m.db")]) == 0
    assert dump(Book.open(tmp_path / "m.db")) == ref
    with pytest.raises(ScanError, match="already holds a scan"):
        merge_books(shards, tmp_path / "m.db")


def test_refuses_other_corpus_and_model_and_empty_corpus(model, tiny, stories, stories_file, tmp_path, capsys):
    path = tmp_path / "b.db"
    scan_corpus(model, stories[:3], path, progress=False, **ARGS)
    with pytest.raises(ScanError, match="corpus"):
        scan_corpus(model, stories[:4], path, progress=False, **ARGS)
    with pytest.raises(ScanError, match="k"):
        scan_corpus(model, stories[:3], path, progress=False, **{**ARGS, "k": 7})
    s = scan_corpus(model, stories[:4], path, progress=False, overwrite=True, **ARGS)
    assert s.complete and s.sequences >= 4
    other = tiny.with_weights(tiny.weights.replace(W_E=tiny.weights.W_E * 2))
    with pytest.raises((ScanError, BookError), match="model|fingerprint"):
        scan_corpus(other, stories[:4], path, progress=False, **ARGS)
    with pytest.raises(CorpusError, match="no stories"):
        scan_corpus(model, [], tmp_path / "e.db", progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n<|endoftext|>\n  \n")
    assert main(["scan", str(tmp_path / "nowhere"), "--corpus", str(empty), "--book", str(tmp_path / "x.db")]) == 2
    assert main(["scan", str(model.path), "--corpus", str(empty), "--book", str(tmp_path / "x.db"),
                 "--no-progress"]) == 2
    assert "no stories" in capsys.readouterr().err
    assert main(["scan", str(model.path), "--corpus", str(stories_file), "--book", str(tmp_path / "y.db"),
                 "--shard", "3/2"]) == 2


def test_max_tokens_and_progress_output(model, stories_file, tmp_path, capsys):
    path = tmp_path / "m.db"
    assert main(["scan", str(model.path), "--corpus", str(stories_file), "--book", str(path), "--max-tokens", "300",
                 "--max-len", "32", "--k", "4"]) == 0
    out = capsys.readouterr()
    assert "tok/s" in out.err and "scanned" in out.out
    info = Book.open(path).conn.execute("SELECT progress FROM scan_state").fetchone()[0]
    import json

    prog = json.loads(info)
    assert 300 <= prog["tokens"] < 300 + 31  # whole sequences, stops at the first past the limit
    assert os.path.getsize(path) > 0


def test_fused_kernels_and_torch_path_write_the_same_book(model, stories_file, ref, tmp_path, monkeypatch):
    """End to end on a 2-layer model: the torch path (the GPU path) writes the book the CPU kernels wrote
    (``ref``): every neuron table, every example and pair exactly; head means to float precision (the
    kernels sum them in float64, torch in float32)."""
    from circuitbook.scan.heads import HeadAccumulator
    from circuitbook.scan.neurons import NeuronAccumulator

    monkeypatch.setattr(NeuronAccumulator, "kernels", "torch")
    monkeypatch.setattr(HeadAccumulator, "kernels", "torch")
    path = tmp_path / "torch.db"
    scan_corpus(model, stories_file, path, batch_size=5, progress=False, **ARGS)
    got = dump(Book.open(path))
    for table in ("scan_neurons", "scan_examples", "scan_token_means", "scan_head_pairs"):
        assert got[table] == ref[table], table
    assert [r[:3] for r in got["scan_heads"]] == [r[:3] for r in ref["scan_heads"]]
    for x, y in zip(got["scan_heads"], ref["scan_heads"]):
        assert x[3:] == pytest.approx(y[3:], rel=1e-5, abs=1e-6)
