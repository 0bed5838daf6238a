"""circuitbook circuits MODEL --book BOOK.db: read circuits off the weights and store them in the book."""

from __future__ import annotations

from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_encoding_arg, add_model_args, check_corpus_arg, load


def register(sub) -> None:
    p = sub.add_parser("circuits", help="neuron/head circuits, direct path, composition, detectors -> the book",
                       description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--book", required=True, help="book file to store results in (created if missing)")
    p.add_argument("--corpus", help="stories (TinyStories .txt, text, JSONL) to measure norm scales and the "
                                    "direct-path loss on; without it effects are per unit residual scale")
    p.add_argument("--stories", type=int, default=200, help="use the first N stories of the corpus (default 200)")
    p.add_argument("--k", type=int, default=10, help="tokens kept per neuron effect (default 10)")
    p.add_argument("--k-rows", type=int, default=5, help="tokens kept per source/query token of every OV/QK "
                                                          "circuit and the bigram table (default 5)")
    p.add_argument("--pairs", type=int, default=100, help="global top pairs kept per circuit (default 100)")
    p.add_argument("--virtual", type=int, default=8, help="virtual heads (strongest V-composition) to analyse")
    p.add_argument("--overwrite", action="store_true", help="rebind a book that describes another model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="print the kernel choices measured on this CPU "
                                                                   "(screening dtype, GFLOP/s) and seconds per task")
    add_encoding_arg(p)
    p.set_defaults(func=run, writes=("book",))


def run(args) -> int:
    from ..book import Book
    from ..circuits import CircuitsSettings, run_circuits

    for name in ("stories", "k", "k_rows", "pairs"):
        if getattr(args, name) < 1:
            raise CircuitbookError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.virtual < 0:
        raise CircuitbookError(f"--virtual must be >= 0, got {args.virtual}")
    if args.corpus and not args.corpus.startswith("hf:") and not Path(args.corpus).is_file():
        raise CircuitbookError(f"corpus {args.corpus} does not exist or is not a file")
    check_corpus_arg(args)
    Book.check(args.book)
    model = load(args)
    book = Book.open(args.book)
    s = CircuitsSettings(k=args.k, k_rows=args.k_rows, n_pairs=args.pairs, n_virtual=args.virtual,
                         max_stories=args.stories)
    run_circuits(model, book, args.corpus, s, progress=not args.no_progress, overwrite=args.overwrite, echo=print,
                 verbose=args.verbose)
    return 0
