"""``circuitbook coverage --book BOOK.db --corpus PATH [--model MODEL]``: keep only the units labelled in the
book (everything else ablated) and report the loss that recovers, overall and per type / label.

``--features NAME``: the same inside dictionary NAME of the book: its MLP replaced by the dictionary, the
labelled features kept, the other features ablated (``--mode``), the error term kept or dropped
(``--error``, default keep; the summary says which); the rest of the model is left as it is."""

from __future__ import annotations

from ..errors import CircuitbookError
from ._common import add_encoding_arg, add_model_args, check_corpus_arg


def register(sub) -> None:
    p = sub.add_parser("coverage", help="how much of the model do the book's labelled units explain",
                       description=__doc__.splitlines()[0])
    p.add_argument("--book", required=True, help="the book whose labelled units are kept")
    p.add_argument("--corpus", required=True, help="stories to measure on")
    p.add_argument("--model", help="model directory or hub id (default: the book's model)")
    p.add_argument("--mode", choices=("mean", "zero"), default="mean", help="how unlabelled units are ablated")
    p.add_argument("--stories", type=int, default=200, help="use the first N stories (default 200)")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--no-labels", action="store_true", help="skip the per-label breakdown")
    p.add_argument("--features", metavar="NAME", help="coverage of the labelled features of the book's dictionary "
                                                     "NAME (name or number) instead of neurons and heads")
    p.add_argument("--error", choices=("keep", "drop"), default=None,
                   help="with --features: keep (default) or drop the dictionary's error term")
    add_model_args(p, required=False)
    add_encoding_arg(p)
    p.set_defaults(func=main, writes=("book",))


def main(args) -> int:
    from ..book import Book
    from ..book import handcraft as hb
    from ..corpus import batches, corpus_hash
    from ..handcraft import coverage_from_book, feature_coverage_from_book
    from ..handcraft.splice import WEIGHT_ABLATORS
    from .handcraft import check_numbers, check_same_model, model_and_book, stories_of

    check_numbers(args)
    if args.error is not None and args.features is None:
        raise CircuitbookError("--error keeps or drops a dictionary's error term: it needs --features NAME")
    Book.check(args.book, must_exist=True)
    check_corpus_arg(args, min_stories=1)
    model, book = model_and_book(args, must_exist=True)  # read-only until there is something to store
    check_same_model(book, model)
    corpus = lambda: batches(stories, model.tokenizer, args.max_len, args.batch_size)  # noqa: E731
    if args.features is not None:
        fd = _dictionary(book, model, args.features)
        stories = stories_of(args, need=1)
        cov = feature_coverage_from_book(book, model, fd, corpus, args.mode, args.error or "keep", progress=True,
                                         per_label=not args.no_labels)
    else:
        if not any(u.kind in WEIGHT_ABLATORS for u in book.labelled()):
            raise CircuitbookError(f"{book.path} has no labelled units: label some first (web UI or Book.set_label; "
                                   f"labelled features count with --features NAME)")
        stories = stories_of(args, need=1)
        cov = coverage_from_book(book, model, corpus, args.mode, progress=True, per_label=not args.no_labels)
    print(cov.summary())
    book = Book.open(args.book, create=False)
    book.bind_model(model)
    cid = hb.save_coverage(book, cov.to_dict(), model.fingerprint(), f"{args.corpus}#{corpus_hash(args.corpus)}")
    print(f"stored as coverage run {cid} in {book.path}")
    return 0


def _dictionary(book, model, which: str):
    """The book's dictionary ``which``, fitted to ``model``, with at least one labelled feature."""
    from ..dictionary.handcraft import book_feature_dictionaries
    from ..handcraft import labelled_features

    fd = book_feature_dictionaries(book, [which], model.cfg, model.weights.W_E.device)[which]
    if not labelled_features(book, fd):
        raise CircuitbookError(f"{book.path} has no labelled features of dictionary {fd.name!r}: label some "
                               f"feature/{fd.number}/IDX first (web UI or Book.set_label)")
    return fd
