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
    g = p.add_argument_group("scale-out", "run the scan as N shard jobs on an executor, retry failed shards and "
                             "merge them into --book (identical to a single-process scan); shard books are kept "
                             "in BOOK.shards/ and a re-run reuses the finished ones (see circuitbook/scale/)")
    g.add_argument("--shards", type=int, default=None, help="number of shard jobs (default: one process, no shards)")
    g.add_argument("--executor", default=None, choices=sorted(EXECUTOR_NAMES),
                   help="where shard jobs run: local processes (default), ray tasks, or a slurm job array")
    g.add_argument("--retries", type=int, default=2, help="times a failed shard is submitted again (default 2)")
    g.add_argument("--workers", type=int, default=None, help="local: processes at once (default: min(shards, CPUs))")
    g.add_argument("--ray-address", default=None, help="ray: a running cluster (HOST:PORT, ray://HOST:PORT, auto); "
                   "default: a local Ray started for the run with this machine's CPUs")
    g.add_argument("--ray-cpus", type=int, default=None, help="ray: CPUs of the local Ray (default: all)")
    g.add_argument("--slurm-partition", default=None, help="slurm: partition of the job array")
    g.add_argument("--slurm-time", type=int, default=60, help="slurm: minutes per shard job (default 60)")
    g.add_argument("--slurm-mem", type=float, default=None, help="slurm: GB of memory per shard job")
    g.add_argument("--slurm-cpus", type=int, default=4, help="slurm: CPUs per shard job (default 4)")
    g.add_argument("--slurm-local", action="store_true", help="slurm: run the job array with submitit's local "
                   "executor on this machine (also: CIRCUITBOOK_SLURM_LOCAL=1), e.g. to try it without a cluster")
    p.set_defaults(func=run, writes=("book",))


EXECUTOR_NAMES = ("local", "ray", "slurm")  # scale/executors.py registers them (imported only when used)


def run(args) -> int:
    from ..scan import scan_corpus

    from ..book import Book

    shard = _shard(args.shard)
    if args.shards is not None or args.executor is not None:
        if args.shard != "0/1":
            raise CircuitbookError("--shard i/n scans one shard by hand; --shards N runs them all: pick one")
        return _run_scaled(args)
    model = load(args)
    check_corpus_arg(args)
    Book.check(args.book)
    summary = scan_corpus(model, args.corpus, args.book, _settings(args, shard), overwrite=args.overwrite,
                          keep_state=True if args.keep_state else None, progress=not args.no_progress)
    print(summary)
    return 0


def _settings(args, shard):
    from ..scan import ScanSettings

    return ScanSettings(k=args.k, r=args.r, before=args.before, after=args.after, max_len=args.max_len,
                        max_tokens=args.max_tokens, shard=shard, batch_size=args.batch_size,
                        checkpoint_every=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds)


def _run_scaled(args) -> int:
    from ..book import Book
    from ..scale import ExecutorOptions, scale_scan

    model = load(args)
    check_corpus_arg(args)
    Book.check(args.book)
    settings = _settings(args, (0, 1))
    opts = ExecutorOptions(workers=args.workers, cpus=args.ray_cpus, ray_address=args.ray_address,
                           slurm_partition=args.slurm_partition, slurm_time=args.slurm_time, slurm_mem=args.slurm_mem,
                           slurm_cpus=args.slurm_cpus, slurm_local=args.slurm_local)
    summary = scale_scan(model, {"model": args.model, "dtype": args.dtype, "device": args.device}, args.corpus,
                         args.book, settings, shards=args.shards or 2, executor=args.executor or "local",
                         retries=args.retries, opts=opts, overwrite=args.overwrite, encoding=args.encoding,
                         progress=not args.no_progress)
    for line in summary.failures:
        print(f"retried: {line}")
    print(summary)
    return 0
