"""circuitbook scan MODEL --corpus PATH --book BOOK.db: record what every neuron and head responds to."""

from __future__ import annotations

from ..errors import CircuitbookError
from ._common import (EXECUTOR_NAMES, add_encoding_arg, add_model_args, add_scale_args, check_corpus_arg,  # noqa: F401
                      check_scale_args, executor_options, load)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise CircuitbookError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise CircuitbookError(f"--shard {text}: need 0 <= i < n")
    return i, n


def register(sub) -> None:
    p = sub.add_parser("scan", help="scan a corpus: top examples, quantile samples, histograms for every unit",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--corpus", required=True, help="stories: TinyStories .txt, plain text, .jsonl or hf:NAME")
    p.add_argument("--book", required=True, help="book file (created if missing)")
    p.add_argument("--k", type=int, default=32, help="top examples per unit (default 32)")
    p.add_argument("--r", type=int, default=4, help="sampled examples per activation band (default 4)")
    p.add_argument("--before", type=int, default=32, help="context tokens before the focus token (default 32)")
    p.add_argument("--after", type=int, default=8, help="context tokens after it (default 8)")
    p.add_argument("--max-len", type=int, default=None, help="tokens per sequence incl. BOS (default: 512 or the "
                   "model's context if smaller)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many story tokens")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--shard", default="0/1", help="scan stories i mod n only (i/n); merge the books later")
    p.add_argument("--checkpoint-every", type=int, default=25, help="batches between checkpoints (default 25)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="and seconds between checkpoints (default 60: a killed scan redoes at most about that)")
    p.add_argument("--keep-state", action="store_true", help="keep the resumable state (implied by --shard)")
    p.add_argument("--overwrite", action="store_true", help="replace a scan of another model/corpus/settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--features", action="append", metavar="DICTIONARY",
                   help="also record the features of this dictionary of the book (name or number; repeatable; "
                        "'all': every one) in the same pass: feature/<number>/<idx> units with the neurons' statistics")
    add_encoding_arg(p)
    add_scale_args(p, "run the scan as N shard jobs on an executor, retry failed shards and merge them into --book "
                   "(identical to a single-process scan); shard books are kept in BOOK.shards/ and a re-run "
                   "reuses the finished ones (see circuitbook/scale/)")
    p.set_defaults(func=run, writes=("book",))


def run(args) -> int:
    from ..scan import scan_corpus

    from ..book import Book

    shard = _shard(args.shard)
    if args.shards is not None or args.executor is not None:
        if args.shard != "0/1":
            raise CircuitbookError("--shard i/n scans one shard by hand; --shards N runs them all: pick one")
        check_scale_args(args)
        return _run_scaled(args)
    model = load(args)
    check_corpus_arg(args)
    Book.check(args.book)
    sources = _feature_sources(model, args)
    summary = scan_corpus(model, args.corpus, args.book, _settings(args, shard), overwrite=args.overwrite,
                          keep_state=True if args.keep_state else None, progress=not args.no_progress,
                          sources=sources)
    print(summary)
    return 0


def _feature_sources(model, args) -> tuple:
    """Scan sources for --features (read from the book, which must hold the dictionaries)."""
    if not args.features:
        return ()
    from pathlib import Path

    from ..book import Book
    from ..dictionary.scan import feature_sources

    if not Path(args.book).is_file():
        raise CircuitbookError(f"--features: {args.book} does not exist (train or import a dictionary into it first: "
                               f"circuitbook dictionary train / import)")
    b = Book.open(args.book, create=False, readonly=True)
    try:
        return feature_sources(model, b, args.features)
    finally:
        b.close()


def _settings(args, shard):
    from ..scan import ScanSettings

    return ScanSettings(k=args.k, r=args.r, before=args.before, after=args.after, max_len=args.max_len,
                        max_tokens=args.max_tokens, shard=shard, batch_size=args.batch_size,
                        checkpoint_every=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds)


def _run_scaled(args) -> int:
    from ..book import Book
    from ..scale import scale_scan

    model = load(args)
    check_corpus_arg(args)
    _feature_sources(model, args)  # a missing or misfit dictionary fails here, before any shard runs
    Book.check(args.book)
    settings = _settings(args, (0, 1))
    opts = executor_options(args)
    summary = scale_scan(model, {"model": args.model, "dtype": args.dtype, "device": args.device}, args.corpus,
                         args.book, settings, shards=args.shards or 2, executor=args.executor or "local",
                         retries=args.retries, opts=opts, overwrite=args.overwrite, encoding=args.encoding,
                         progress=not args.no_progress, features=args.features)
    for line in summary.failures:
        print(f"retried: {line}")
    print(summary)
    return 0
