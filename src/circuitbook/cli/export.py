"""circuitbook export BOOK.db --html DIR: write the book as a browsable static site."""

from __future__ import annotations

from pathlib import Path

from ..errors import CircuitbookError


def register(sub) -> None:
    p = sub.add_parser("export", help="write a book as a static HTML site for sharing")
    p.add_argument("book", help="the book file (.db)")
    p.add_argument("--html", required=True, metavar="DIR", help="output directory (empty, or a previous export)")
    p.add_argument("--labelled-only", action="store_true", help="export only the labelled units' pages")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..book import Book
    from ..web import export_site

    if not Path(args.book).is_file():
        raise CircuitbookError(f"no book at {args.book}")
    book = Book.open(args.book, create=False, readonly=True)
    units = [(u.kind, u.layer, u.idx) for u in book.labelled()] if args.labelled_only else None
    n = export_site(book, args.html, units=units)
    print(f"wrote {n} pages to {args.html} (open {Path(args.html) / 'index.html'})")
    return 0
