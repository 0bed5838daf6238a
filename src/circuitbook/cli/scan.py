"""circuitbook scan MODEL --corpus PATH --book BOOK.db: record what every neuron and head responds to."""

from __future__ import annotations

from ..errors import CircuitbookError
from ._common import add_encoding_arg, add_model_args, check_corpus_arg, load


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
    add_encoding_arg(p)
    p.set_defaults(func=run, writes=("book",))


def run(args) -> int:
    from ..scan import ScanSettings, scan_corpus

    from ..book import Book

    shard = _shard(args.shard)
    model = load(args)
    check_corpus_arg(args)
    Book.check(args.book)
    settings = ScanSettings(k=args.k, r=args.r, before=args.before, after=args.after, max_len=args.max_len,
                            max_tokens=args.max_tokens, shard=shard, batch_size=args.batch_size,
                            checkpoint_every=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds)
    summary = scan_corpus(model, args.corpus, args.book, settings, overwrite=args.overwrite,
                          keep_state=True if args.keep_state else None, progress=not args.no_progress)
    print(summary)
    return 0
