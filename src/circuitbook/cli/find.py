"""``circuitbook find BOOK.db "look search find seek"``: rank neurons and heads by a concept's words."""

from __future__ import annotations

from pathlib import Path

from ..errors import CircuitbookError


def register(sub) -> None:
    p = sub.add_parser("find", help="concept search: units that read and promote a concept's words")
    p.add_argument("book", help="book file (its model and corpus are used unless --model/--corpus say otherwise)")
    p.add_argument("words", help='the concept\'s words, e.g. "look search find seek"')
    p.add_argument("--model", help="model directory (default: the one the book was made from)")
    p.add_argument("--corpus", help="stories to read contexts from (default: the book's corpus)")
    p.add_argument("-k", type=int, default=10, help="neurons (and heads) to show (default 10)")
    p.add_argument("--exact", action="store_true", help="only the words as given, no inflections")
    p.add_argument("--max-windows", type=int, default=128, help="windows with concept words to read (default 128)")
    p.add_argument("--encoding", default=None, help="text encoding of --corpus (default utf-8, strict)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..book import Book
    from ..roles.concepts import find_concept
    from ..model import load_model

    from ._common import check_corpus_arg

    if args.k < 1 or args.max_windows < 1:
        raise CircuitbookError(f"-k and --max-windows must be at least 1 (got {args.k}, {args.max_windows})")
    if not args.words.strip():
        raise CircuitbookError("give the concept's words, e.g. \"look search find seek\"")
    Book.check(args.book, must_exist=True)
    check_corpus_arg(args)
    book = Book.open(args.book, create=False, readonly=True)
    source = args.model or book.get_meta("model_source")
    if not source:
        raise CircuitbookError(f"{args.book} is bound to no model; pass --model")
    model = load_model(source)
    res = find_concept(book, model, args.words, corpus=args.corpus, k=args.k, exact=args.exact,
                       max_windows=args.max_windows)
    print(res.table())
    return 0
