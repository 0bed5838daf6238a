"""The local web workbench over a book: ``circuitbook serve BOOK.db`` and ``circuitbook export``.

Why server-rendered pages (Jinja2) with a few lines of vanilla JavaScript rather than a front-end app:
no build step and no npm toolchain to install or keep in step, the pages work offline and from a static
export (the same templates render both), every value from the book is escaped by Jinja's autoescape or
by ``book.render`` (the only place markup is built in Python), and a page is one SQLite read plus a
template render, which keeps a neuron page well under 100 ms on a book of the 1L-21M's size. The
JavaScript only enhances: saving a label without a reload, the static export's live index filter,
and the prompt page's graph interactions.

Public API: ``create_app(book, model=None)`` (FastAPI app), ``serve(book_path, model, host, port)``,
``export_site(book, out_dir)``, and ``Site`` (page rendering).
"""

from .app import create_app
from .export import export_site
from .pages import NotFound, Site, parse_unit
from .serve import serve

__all__ = ["create_app", "export_site", "serve", "Site", "NotFound", "parse_unit"]
