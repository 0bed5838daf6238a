"""``circuitbook explain BOOK [--model M] [--llm URL --llm-model NAME]``: propose a structured explanation
for every unit of the book from its evidence (offline), optionally free-text ones from an LLM endpoint."""

from __future__ import annotations

from ..errors import CircuitbookError
from ._common import add_model_args


def register(sub) -> None:
    p = sub.add_parser("explain", help="propose an explanation (sentence + program) for every unit of a book",
                       description=__doc__.splitlines()[0])
    p.add_argument("book", help="a scanned book (typing and circuits make the explanations better)")
    p.add_argument("--model", help="read output effects from this model's weights (default: the book's model if "
                                   "it loads; else the circuits stage's stored top tokens)")
    p.add_argument("--no-model", action="store_true", help="do not load a model (output rules from circuits only)")
    p.add_argument("--kind", action="append", help="only units of this kind (repeatable)")
    p.add_argument("--min-corr", type=float, default=0.3, help="weakest token rule proposed (default 0.3)")
    p.add_argument("--no-typing-gate", action="store_true",
                   help="propose token rules even for units the typing stage found no mechanism in")
    p.add_argument("--llm", metavar="URL", help="an OpenAI-compatible endpoint (…/v1); key from CIRCUITBOOK_LLM_KEY "
                                                "or OPENAI_API_KEY")
    p.add_argument("--llm-model", default="gpt-4o-mini", help="model name sent to the endpoint")
    p.add_argument("--llm-units", type=int, default=20, help="how many units to send (highest max activation first)")
    p.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per request (default 30)")
    add_model_args(p, required=False)
    p.set_defaults(func=main, writes=("book",))


def open_book(path: str):
    from ..book import Book

    return Book.open(path, create=False)


def check_kinds(kinds: list[str] | None) -> None:
    """Refuse a --kind that names no registered unit kind (it would select nothing)."""
    from ..units import kind_names

    for k in kinds or ():
        if k not in kind_names():
            raise CircuitbookError(f"--kind {k!r}: no such unit kind (known: {', '.join(kind_names())})")


def book_model(args, book, required: bool = True):
    """The model named by --model, else the book's model source (None if not required and it fails). A model
    that is not the one the book describes (another fingerprint) is refused, or None when not required."""
    from ..book import BookError
    from ._common import load

    src = args.model or book.get_meta("model_source")
    if not src:
        if required:
            raise CircuitbookError("give --model (the book records no model source)")
        return None
    args.model = src
    try:
        model = load(args)
    except CircuitbookError:
        if required:
            raise
        return None
    have = book.get_meta("model_fingerprint")
    if have is not None and have != model.fingerprint():
        if required:
            raise BookError(f"{book.path} describes model {book.get_meta('model_source')!r} (fingerprint {have}), "
                            f"not {model.source!r} ({model.fingerprint()}): give the book's model as --model")
        return None
    return model


def main(args) -> int:
    from ..explain.propose import ProposeSettings
    from ..explain.run import explain_book

    check_kinds(args.kind)
    book = open_book(args.book)
    model = None if args.no_model else book_model(args, book, required=args.model is not None)
    st = ProposeSettings(min_corr=args.min_corr, require_typing=not args.no_typing_gate)
    s = explain_book(book, model, st, kinds=args.kind, progress=True)
    print(s)
    if args.llm:
        from ..book import scan as bs
        from ..explain.llm import explain_with_llm

        top = bs.unit_table(book, "neuron", order_by="max", limit=args.llm_units)
        n = explain_with_llm(book, args.llm, args.llm_model, [("neuron", r["layer"], r["idx"]) for r in top],
                             timeout=args.llm_timeout, progress=True)
        print(f"{n} explanations from llm:{args.llm_model}")
    return 0
