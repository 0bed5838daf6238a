"""Static export: every page written, every relative link resolves inside the folder, text escaped,
and the writer never leaves the folder or overwrites a folder that is not an export."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from circuitbook.book import Book
from circuitbook.cli import main
from circuitbook.web import export_site
from circuitbook.web.export import ExportError

XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture()
def book(tmp_path):
    from circuitbook.demo import build_demo

    b = Book.open(tmp_path / "book.db")
    b.bind_model(build_demo().model)
    b.set_label("neuron", 0, 3, label=XSS, notes="a note", status="confirmed")
    b.set_label("head", 0, 1, label="copier")
    return b


def test_export_writes_a_linked_site(tmp_path, book):
    out = tmp_path / "site"
    n = export_site(book, out, progress=False)
    cfg = book.config
    assert n == cfg["d_mlp"] + cfg["n_heads"] + 1
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == n
    for page in pages:
        text = page.read_text()
        for ref in re.findall(r'(?:href|src)="([^"]+)"', text):
            if urlsplit(ref).scheme or ref.startswith("?"):
                continue
            target = (page.parent / ref).resolve()
            assert target.is_relative_to(out.resolve()) and target.exists(), f"{page}: broken link {ref}"
    unit = (out / "neuron" / "0" / "3.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in unit and "<script>alert" not in unit
    assert "<img" not in unit and 'id="label-form"' not in unit  # read-only, no editor
    assert "confirmed" in unit
    assert 'data-static="true"' in (out / "index.html").read_text()


def test_export_refuses_a_foreign_nonempty_dir(tmp_path, book):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(ExportError, match="not empty"):
        export_site(book, out, progress=False)
    assert (out / "thesis.tex").read_text() == "do not delete"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_site(book, f, progress=False)


def test_export_does_not_follow_planted_symlinks(tmp_path, book):
    out = tmp_path / "site"
    export_site(book, out, units=[("neuron", 0, 1)], progress=False)  # a previous export: re-export allowed
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "neuron").rename(tmp_path / "old")
    os.symlink(outside, out / "neuron")
    with pytest.raises(ExportError, match="outside"):
        export_site(book, out, units=[("neuron", 0, 1)], progress=False)
    assert list(outside.iterdir()) == []


def test_export_cli(tmp_path, book, capsys):
    out = tmp_path / "site"
    assert main(["export", str(book.path), "--html", str(out), "--labelled-only"]) == 0
    assert "wrote 3 pages" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")) == [
        "head/0/1.html", "index.html", "neuron/0/3.html"]
    assert main(["export", str(tmp_path / "missing.db"), "--html", str(out)]) == 2
