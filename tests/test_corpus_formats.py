"""Corpus formats at scale: the same stories as TinyStories text, JSONL, parquet and a local Hugging Face dataset
directory (``hf:DIR:SPLIT``, streamed offline through ``datasets``) read the same and scan into the same book;
parquet is read one record batch at a time; broken parquet / dataset inputs get one clear error."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from circuitbook.corpus import SEPARATOR, CorpusError, check_corpus, read_stories

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCAN_TABLES = ("scan_neurons", "scan_heads", "scan_examples", "scan_token_means", "scan_head_pairs")


def write_formats(stories: list[str], d: Path) -> dict[str, str]:
    """The stories in every format; returns {format: corpus argument}."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "s.txt").write_text(f"\n{SEPARATOR}\n".join(stories) + "\n")
    (d / "s.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    table = pa.table({"id": list(range(len(stories))), "text": stories})
    pq.write_table(table, d / "s.parquet", row_group_size=37)  # several row groups, batches across them
    (d / "hf" / "data").mkdir(parents=True, exist_ok=True)
    half = len(stories) // 2  # a split in two files: the stream reads them in order
    pq.write_table(table.slice(0, half), d / "hf" / "data" / "validation-00000-of-00002.parquet")
    pq.write_table(table.slice(half), d / "hf" / "data" / "validation-00001-of-00002.parquet")
    pq.write_table(table.slice(0, 3), d / "hf" / "data" / "train-00000-of-00001.parquet")
    return {"text": str(d / "s.txt"), "jsonl": str(d / "s.jsonl"), "parquet": str(d / "s.parquet"),
            "hf": f"hf:{d / 'hf'}:validation"}


@pytest.fixture(scope="module")
def formats(stories_path, tmp_path_factory):
    stories = [s for _, s in zip(range(120), read_stories(stories_path))]
    return stories, write_formats(stories, tmp_path_factory.mktemp("formats"))


def test_every_format_reads_the_same_stories(formats, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stories, srcs = formats
    for fmt, src in srcs.items():
        check_corpus(src)
        assert list(read_stories(src)) == stories, fmt
    assert len(list(read_stories(srcs["hf"].replace(":validation", ":train")))) == 3


def _scan_tables(book: Path) -> dict:
    c = sqlite3.connect(f"file:{book}?mode=ro", uri=True)
    out = {t: sorted(c.execute(f"SELECT * FROM {t}").fetchall()) for t in SCAN_TABLES}
    c.close()
    return out


def test_every_format_scans_into_the_same_book(formats, ts1l_dir, tmp_path):
    """The CLI scan of ts-1l-dev over each format (hf: a local dataset, offline): every scan table identical."""
    _, srcs = formats
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    tables = {}
    for fmt, src in srcs.items():
        book = tmp_path / f"{fmt}.db"
        p = subprocess.run([sys.executable, "-m", "circuitbook.cli", "scan", str(ts1l_dir), "--corpus", src,
                            "--book", str(book), "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (fmt, p.stderr[-2000:])
        tables[fmt] = _scan_tables(book)
    assert tables["text"]["scan_neurons"] and tables["text"]["scan_examples"]
    for fmt in ("jsonl", "parquet", "hf"):
        assert tables[fmt] == tables["text"], fmt


MEMORY = r"""
import sys, pyarrow as pa
from circuitbook.corpus import read_stories
n = 0
for s in read_stories(sys.argv[1]):
    n += len(s)
print(n, pa.default_memory_pool().max_memory())
"""


def test_parquet_is_streamed_one_record_batch_at_a_time(tmp_path):
    """80,000 stories (~39 MB of text) in 20 row groups: reading them all peaks at a small fraction of the text in
    Arrow memory (one record batch of PARQUET_BATCH rows, plus a row group's pages), never the whole table."""
    story = "Once upon a time there was a little dog named Max who loved to run in the park. " * 6
    texts = [f"{i} {story}" for i in range(80_000)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), path, row_group_size=4_000)
    p = subprocess.run([sys.executable, "-c", MEMORY, str(path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    chars, peak = map(int, p.stdout.split())
    assert chars == sum(len(t.strip()) for t in texts)
    print(f"{chars:,} characters read with an Arrow peak of {peak:,} bytes")
    assert peak < chars / 4, (peak, chars)


def test_bad_parquet_and_dataset_inputs_get_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"body": ["a story"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    cases = {str(tmp_path / "garbage.parquet"): "not a readable parquet file",
             str(tmp_path / "nocol.parquet"): "no 'text' or 'story' column",
             str(tmp_path / "ints.parquet"): "not strings",
             str(tmp_path / "empty.parquet"): "holds no stories",
             f"hf:{tmp_path / 'nothere'}": "is not a dataset directory",
             f"hf:{tmp_path / 'ds'}:validation": "cannot stream split 'validation'",
             f"hf:{tmp_path / 'ds'}:train:story": "no field 'story'",
             "hf:": "expected hf:NAME"}
    for src, msg in cases.items():
        with pytest.raises(CorpusError, match=msg):
            check_corpus(src)
            list(read_stories(src))


def test_cli_refuses_a_bad_parquet_corpus_before_writing(ts1l_dir, tmp_path):
    pq.write_table(pa.table({"body": ["a story"]}), tmp_path / "nocol.parquet")
    p = subprocess.run([sys.executable, "-m", "circuitbook.cli", "scan", str(ts1l_dir), "--corpus",
                        str(tmp_path / "nocol.parquet"), "--book", str(tmp_path / "b.db")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "nocol.parquet" in p.stderr and "column" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["nocol.parquet"]
