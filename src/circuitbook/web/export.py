"""Static export: the index and every unit page as plain HTML files (``circuitbook export --html DIR``).

Layout of DIR: ``index.html``, ``neuron/{layer}/{idx}.html``, ``head/{layer}/{idx}.html``,
``static/style.css``, ``static/app.js`` and a marker file ``.circuitbook-export``. Links are relative,
so the folder can be zipped, shared and opened from disk. Pages are read-only (no editor, no prompt
page); the index filters in the browser.

Safety: every file name is built from the unit's integers (never from book text), each target is
resolved and must lie inside DIR (a symlink planted in DIR cannot redirect a write), and a non-empty
DIR that is not a previous export is refused rather than overwritten.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Iterable

from ..book import Book
from ..errors import CircuitbookError
from ..progress import progress as progress_bar
from .app import STATIC_FILES
from .links import unit_url
from .pages import Site

MARKER = ".circuitbook-export"


class ExportError(CircuitbookError, ValueError):
    """The export directory cannot be used (not empty and not a previous export, a file, ...)."""


def _target(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if not p.is_relative_to(root):
        raise ExportError(f"refusing to write {rel!r}: it resolves outside {root}")
    return p


def _write(root: Path, rel: str, data: str | bytes) -> None:
    p = _target(root, rel)
    p.parent.mkdir(parents=True, exist_ok=True)
    _target(root, rel)  # re-check after creating parents
    tmp = p.with_name(p.name + ".tmp")
    (tmp.write_bytes if isinstance(data, bytes) else lambda d: tmp.write_text(d, encoding="utf-8"))(data)
    os.replace(tmp, p)


def export_site(book: Book | str | Path, out_dir: str | Path, units: Iterable[tuple[str, int, int]] | None = None,
                progress: bool = True) -> int:
    """Write the static site for ``book`` into ``out_dir``; returns the number of pages written.
    ``units``: (kind, layer, idx) to export (default: every unit of the bound model)."""
    if not isinstance(book, Book):
        book = Book.open(book, create=False, readonly=True)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ExportError(f"{out} is not empty and not a previous circuitbook export; choose an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    (root / MARKER).write_text("written by circuitbook export\n")
    site = Site(book, static=True)
    rows = site.rows()
    if units is None:
        units = [(r.kind, r.layer, r.idx) for r in rows]
    units = list(units)
    base = resources.files("circuitbook.web") / "static"
    for name in STATIC_FILES:
        _write(root, f"static/{name}", (base / name).read_bytes())
    _write(root, "index.html", site.index_page())
    for kind, layer, idx in progress_bar(units, desc="export", unit="page", enabled=progress):
        _write(root, unit_url(kind, int(layer), int(idx), root="", static=True), site.unit_page(kind, layer, idx))
    return len(units) + 1
