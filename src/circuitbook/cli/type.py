"""``circuitbook type MODEL --book BOOK.db [--corpus PATH]``: type every neuron (syntax / content / mixed / unclear)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_model_args, load


def register(sub) -> None:
    p = sub.add_parser("type", help="type every neuron: syntax rule (PRON -> VERB), content, mixed or unclear")
    add_model_args(p)
    p.add_argument("--book", required=True, help="book file to read caches from and store the types in")
    p.add_argument("--corpus", help="stories to tag and read (default: the corpus the book was typed/scanned on)")
    p.add_argument("--max-stories", type=int, help="use only the first N stories")
    p.add_argument("--min-count", type=int, default=5, help="tokens seen fewer times are left out (default 5)")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate (default 0.05)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=run)


def _corpus(args, book) -> str:
    if args.corpus:
        return args.corpus
    for key in ("typing_corpus_path", "corpus_path"):
        path = book.get_meta(key)
        if path and Path(path).is_file():
            return path
    raise CircuitbookError("no --corpus given and the book records no corpus file")


def run(args) -> int:
    from itertools import islice

    from ..book import Book
    from ..corpus import read_stories
    from ..roles.classify import Settings
    from ..roles.run import type_model

    book = Book.open(args.book)
    corpus = _corpus(args, book)
    stories = list(islice(read_stories(corpus), args.max_stories))
    if not stories:
        raise CircuitbookError(f"corpus {corpus} holds no stories")
    model = load(args)
    res = type_model(model, stories, book=book, settings=Settings(alpha=args.alpha), min_count=args.min_count,
                     batch_size=args.batch_size)
    book.set_meta("typing_corpus_path", str(Path(corpus).resolve()))
    print(f"typed {len(res.types)} neurons against {len(res.universe)} tokens seen >= {args.min_count} times "
          f"in {len(stories)} stories ({res.token_classes.source['tagger']})")
    print(res.summary.table())
    return 0
