"""Run the app with uvicorn (what ``circuitbook serve`` calls)."""

from __future__ import annotations

from pathlib import Path

from ..book import Book, BookError
from .app import LOOPBACK_HOSTS, create_app


def check_model(book: Book, model) -> None:
    """Refuse a model other than the one the book describes (labels would land on the wrong units)."""
    have = book.get_meta("model_fingerprint")
    if have is not None and model is not None and have != model.fingerprint():
        raise BookError(f"{book.path} describes model {book.get_meta('model_source')!r} (fingerprint {have}), "
                        f"not {model.source!r} ({model.fingerprint()}): pass the book's own model to --model")


def serve(book_path: str | Path, model=None, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "warning") -> None:
    """Serve one book until interrupted. ``model`` (a loaded Model) enables the prompt page."""
    import uvicorn

    book = Book.open(book_path, create=False)
    check_model(book, model)
    app = create_app(book, model=model, loopback_only=host in LOOPBACK_HOSTS)
    print(f"circuitbook: serving {book.path} on http://{'[' + host + ']' if ':' in host else host}:{port}/"
          f"{'' if model is not None else '  (no --model: prompt page off)'}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
