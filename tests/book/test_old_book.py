"""A book written by the code before storage moved behind book/ (commit bd32120: the demo model scanned, its
circuits, typing, a handcraft evaluation and labels) opens with today's code, and its pages render as then.

The old code is taken from git history and run in a subprocess; the test skips where that history is absent
(an sdist). The only intended change to the pages is the circuits section's one-line hint on the token
circuits (the notebook's second circuits renderer was dropped; the web one is kept and now has it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from circuitbook.book.core import CORE_MIGRATIONS
from circuitbook.book import Book
from circuitbook.book.render import view

BASE = "bd32120"
REPO = Path(__file__).resolve().parents[2]

OLD_BOOK = r"""
import json, sys
from circuitbook.book import Book
from circuitbook.circuits.run import run_circuits
from circuitbook.demo import build_demo
from circuitbook.handcraft import evaluate_spec, parse_spec
from circuitbook.handcraft.evaluate import store
from circuitbook.roles.run import type_model
from circuitbook.scan.run import scan_corpus

path, truth_path = sys.argv[1], sys.argv[2]
demo = build_demo()
truth, stories = demo.truth, demo.stories
book = Book.open(path)
scan_corpus(demo.model, stories[:100], book, progress=False, k=8, r=1, before=12, after=4)
run_circuits(demo.model, book, stories[:50], progress=False)
type_model(demo.model, stories[:200], book, progress=False)
n = truth["pronoun_verb"]
spec = parse_spec({"name": "old", "neurons": [{"name": "pv", "replaces": n, "input": {"ids": truth["rules"]["pronoun_verb"]["reads"]},
                   "output": {"promote": {"ids": truth["rules"]["pronoun_verb"]["writes"]}}, "strength": 4, "bias": -2, "gain": 2}]})
store(book, evaluate_spec(spec, demo.model, stories[:40], stories[40:80], truth["classes"], batch_size=16), demo.model)
book.set_label("neuron", 0, n, label="PRON -> VERB <b>", status="supported", notes="old & planted")
book.set_label("head", 0, truth["copy_head"], label="name copying", status="hypothesis")
book.checkpoint_wal() if hasattr(book, "checkpoint_wal") else book.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
json.dump(truth, open(truth_path, "w"))
"""

OLD_PAGES = r"""
import json, sys
from fastapi.testclient import TestClient
from circuitbook.book import Book
from circuitbook.book.render import view
from circuitbook.web import create_app

path, truth, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
book = Book.open(path, readonly=True)
c = TestClient(create_app(book), base_url="http://127.0.0.1")
units = [("neuron", 0, truth["pronoun_verb"]), ("neuron", 0, truth["search"]), ("head", 0, truth["copy_head"])]
pages = {f"/{k}/{l}/{i}": c.get(f"/{k}/{l}/{i}").text for k, l, i in units}
pages["/"] = c.get("/").text
pages["sections"] = {f"{k}/{l}/{i}": sorted(book.unit(k, l, i).sections) for k, l, i in units}
json.dump(pages, open(out, "w"))
"""

NEW_HINT = re.compile(r"<p class='hint'>Token circuits: .*?</p>")


@pytest.fixture(scope="module")
def old_book(tmp_path_factory):
    if shutil.which("git") is None or subprocess.run(
            ["git", "-C", str(REPO), "cat-file", "-e", f"{BASE}^{{commit}}"], capture_output=True).returncode:
        pytest.skip(f"git history with {BASE} not available")
    tmp = tmp_path_factory.mktemp("old")
    archive = tmp / "old.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), BASE, "src/circuitbook"], check=True)
    with tarfile.open(archive) as t:
        t.extractall(tmp / "code", filter="data")
    env = {**os.environ, "PYTHONPATH": str(tmp / "code" / "src")}
    out = tmp / "demo"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", OLD_BOOK, str(out / "book.db"), str(out / "truth.json")], env=env,
                       capture_output=True, text=True, timeout=900, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", OLD_PAGES, str(out / "book.db"), str(out / "truth.json"),
                        str(tmp / "pages.json")], env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, json.loads((out / "truth.json").read_text()), json.loads((tmp / "pages.json").read_text())


def test_old_book_opens_with_every_section(old_book):
    out, truth, old = old_book
    before = Book.open(out / "book.db", readonly=True).schema_versions()
    book = Book.open(out / "book.db", create=False)  # a read-write open runs the missing migrations
    after = book.schema_versions()  # the core's (migration 2 lets the unit-kind registry check kinds) and the
    # tables of components newer than the old book (saved graphs); every older component's version is unchanged
    from circuitbook.book import graphs as saved_graphs

    from circuitbook.book.core import components

    # every registered component is at its latest migration; nothing older than the book had is lost
    assert after == {c.name: len(c.migrations) for c in components() if c.migrations}
    assert all(after[k] >= v for k, v in before.items()) and after["core"] == len(CORE_MIGRATIONS)
    assert after["graphs"] == len(saved_graphs.MIGRATIONS) and {"scan", "circuits", "typing", "handcraft"} <= set(before)
    assert book.neuron(0, truth["pronoun_verb"]).label == "PRON -> VERB <b>"
    for key, names in old["sections"].items():
        kind, layer, idx = key.split("/")
        u = book.unit(kind, int(layer), int(idx))
        assert sorted(u.sections) == names and {"scan", "circuits"} <= set(names)
        assert kind == "head" or "typing" in names
        nb = view(book, kind, int(layer), int(idx)).html
        assert nb == u._repr_html_()  # notebooks show the web's renderer, one per section
        for name in names:
            assert f"id='sec-{name}'" in nb and "view failed" not in nb


def test_old_book_pages_render_as_before(old_book):
    from fastapi.testclient import TestClient

    from circuitbook.web import create_app

    out, truth, old = old_book
    c = TestClient(create_app(Book.open(out / "book.db", readonly=True)), base_url="http://127.0.0.1")
    for url, before in old.items():
        if url == "sections":
            continue
        now = c.get(url)
        assert now.status_code == 200
        # the registry adds the dictionary stage's kind to the index's kind filter; nothing else may change
        text = now.text.replace(" + features</option>", "</option>").replace(
            '<option value="feature" >features</option>', "")
        assert NEW_HINT.sub("", text) == before, url
    assert NEW_HINT.search(c.get(f"/head/0/{truth['copy_head']}").text)
