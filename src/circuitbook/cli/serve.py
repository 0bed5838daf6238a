"""circuitbook serve BOOK.db [--model MODEL]: the local web workbench (127.0.0.1 unless --host says otherwise)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_model_args, load


def register(sub) -> None:
    p = sub.add_parser("serve", help="browse and annotate a book in the browser (local web app)")
    p.add_argument("book", help="the book file (.db)")
    p.add_argument("--model", default=None, help="the book's model (HF dir or hub id): enables the prompt page")
    add_model_args(p, required=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..web import serve

    if not Path(args.book).is_file():
        raise CircuitbookError(f"no book at {args.book}")
    if not 0 < args.port < 65536:
        raise CircuitbookError(f"--port must be in 1..65535, not {args.port}")
    model = load(args) if args.model else None
    serve(args.book, model=model, host=args.host, port=args.port)
    return 0
