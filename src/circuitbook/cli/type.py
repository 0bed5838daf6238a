"""``circuitbook type MODEL --book BOOK.db [--corpus PATH]``: type every neuron (syntax / content / mixed / unclear)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_encoding_arg, add_model_args, check_corpus_arg, load


def register(sub) -> None:
    p = sub.add_parser("type", help="type every neuron: syntax rule (PRON -> VERB), content, mixed or unclear")
    add_model_args(p)
    p.add_argument("--book", required=True, help="book file to read caches from and store the types in")
    p.add_argument("--corpus", help="stories to tag and read (default: the corpus the book was typed/scanned on)")
    p.add_argument("--max-stories", type=int, help="use only the first N stories")
    p.add_argument("--min-count", type=int, default=5, help="tokens seen fewer times are left out (default 5)")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate (default 0.05)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--features", metavar="NAME",
                   help="type the features of this transcoder in the book instead of the neurons (from their "
                        "weights; printed, the neurons' stored types are left as they are)")
    add_encoding_arg(p)
    p.set_defaults(func=run, writes=("book",))


def _corpus(args, exists: bool) -> str:
    if args.corpus:
        return args.corpus
    if exists:
        from ..book import Book

        book = Book.open(args.book, create=False, readonly=True)
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

    if args.max_stories is not None and args.max_stories < 1:
        raise CircuitbookError(f"--max-stories must be at least 1, got {args.max_stories}")
    for name in ("min_count", "batch_size"):
        if getattr(args, name) < 1:
            raise CircuitbookError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.alpha < 1:
        raise CircuitbookError(f"--alpha must be between 0 and 1, got {args.alpha}")
    corpus = _corpus(args, Book.check(args.book))
    args.corpus = corpus
    check_corpus_arg(args)
    stories = list(islice(read_stories(corpus), args.max_stories))
    model = load(args)
    if args.features:
        return _features(args, model, stories)
    book = Book.open(args.book)
    res = type_model(model, stories, book=book, settings=Settings(alpha=args.alpha), min_count=args.min_count,
                     batch_size=args.batch_size)
    book.set_meta("typing_corpus_path", str(Path(corpus).resolve()))
    print(f"typed {len(res.types)} neurons against {len(res.universe)} tokens seen >= {args.min_count} times "
          f"in {len(stories)} stories ({res.token_classes.source['tagger']})")
    print(res.summary.table())
    return 0


def _features(args, model, stories) -> int:
    from ..book import Book
    from ..book import roles as stored
    from ..book import scan as bs
    from ..dictionary.store import load_from_book
    from ..dictionary.typing import type_features
    from ..roles.classify import Settings

    book = Book.open(args.book, create=False, readonly=True)
    d, row = load_from_book(book, args.features)
    stats = [bs.unit_stats(book, "feature", row["number"], i) for i in range(d.cfg.d_sae)]
    book.close()
    alive = None if any(s is None for s in stats) else [s.fire_rate > 0 for s in stats]
    settings = Settings(alpha=args.alpha)
    res = type_features(model, d, stories, settings=settings, min_count=args.min_count, alive=alive)
    book = Book.open(args.book, create=False)
    stored.store_feature_types(book, row["number"], res.types,
                               {**dataclasses.asdict(settings), "min_count": args.min_count,
                                "n_stories": len(stories), "alive_from_scan": alive is not None})
    dead = "" if alive is None else f"; {d.cfg.d_sae - sum(alive)} dead features (the scan's fire rate 0) left out"
    print(f"typed {len(res.types)} features of {args.features} against {len(res.universe)} tokens seen >= "
          f"{args.min_count} times in {len(stories)} stories (from their weights; stored in the book{dead})")
    n = row["number"]
    print(res.summary.table(noun="features", key=lambda l, i: f"F{n}.{i}"))
    return 0
