"""Argument helpers shared by commands."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import CircuitbookError

from ..model.load import DTYPES  # noqa: F401  (re-exported: commands read it from here)


def add_model_args(p, required: bool = True) -> None:
    if required:
        p.add_argument("model", help="model directory (HF format) or hub id, e.g. roneneldan/TinyStories-1Layer-21M")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype (default fp32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")


def load(args, model_attr: str = "model"):
    from ..model import load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitbookError(f"--device {args.device} asked for but no CUDA device is available")
    model = load_model(getattr(args, model_attr), dtype=DTYPES[args.dtype], device=args.device)
    if DTYPES[args.dtype] == torch.bfloat16 and args.device == "cpu":
        import sys

        from ..tune import bf16_warning

        msg = bf16_warning(model.cfg.d_model, model.cfg.d_mlp)
        if msg:
            print(msg, file=sys.stderr)
    return model


def add_encoding_arg(p) -> None:
    p.add_argument("--encoding", default=None, help="text encoding of the corpus file (default utf-8, read "
                                                     "strictly: the first bad byte is an error)")


EXECUTOR_NAMES = ("local", "ray", "slurm")  # scale/executors.py registers them (imported only when used)


def add_scale_args(p, description: str) -> None:
    """The scale-out options (--shards, --executor and each engine's settings) of a command that runs shard
    jobs on scale/'s executors."""
    g = p.add_argument_group("scale-out", description)
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


def check_scale_args(args) -> None:
    """Refuse scale-out numbers that cannot work (0 shards would silently mean the default 2)."""
    for opt, v, least in (("--shards", args.shards, 1), ("--retries", args.retries, 0), ("--workers", args.workers, 1),
                          ("--ray-cpus", args.ray_cpus, 1), ("--slurm-time", args.slurm_time, 1),
                          ("--slurm-cpus", args.slurm_cpus, 1)):
        if v is not None and v < least:
            raise CircuitbookError(f"{opt} {v}: need at least {least}")


def check_output_file(path, option: str) -> None:
    """Refuse an output file path that cannot be written (a directory, or in a missing directory), before
    anything is computed or written."""
    p = Path(path)
    if p.is_dir():
        raise CircuitbookError(f"{option} {path}: cannot write it, it is a directory")
    if not p.parent.is_dir():
        raise CircuitbookError(f"{option} {path}: cannot write it, directory {p.parent} does not exist")


def executor_options(args):
    """scale.ExecutorOptions from the options add_scale_args added."""
    from ..scale import ExecutorOptions

    return ExecutorOptions(workers=args.workers, cpus=args.ray_cpus, ray_address=args.ray_address,
                           slurm_partition=args.slurm_partition, slurm_time=args.slurm_time, slurm_mem=args.slurm_mem,
                           slurm_cpus=args.slurm_cpus, slurm_local=args.slurm_local)


def check_corpus_arg(args, attr: str = "corpus", min_stories: int = 1) -> None:
    """Validate the command's corpus file (see corpus.check_corpus) before anything is created."""
    from ..corpus import check_corpus

    if getattr(args, attr, None):
        check_corpus(getattr(args, attr), encoding=getattr(args, "encoding", None), min_stories=min_stories)


def _sidecars(path: Path) -> list[Path]:
    return [path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))]


@contextlib.contextmanager
def guard(args):
    """Run a command so that failing leaves the file system as it found it.

    The books named by ``args.writes`` (attribute names) are write-locked for the whole command (a second
    writer refuses: book.core.write_lock); a book this command created is removed again if it fails with
    a CircuitbookError (an interrupt keeps it: that is resumable work); every book connection the command
    opened is closed at the end (so SQLite removes its -wal / -shm files). ``--encoding`` applies to every
    corpus read."""
    from ..book.core import close_books, connection_mark, write_lock
    from ..corpus import using_encoding

    mark = connection_mark()  # the caller's own connections (in-process use) stay open
    books = [Path(getattr(args, a)) for a in getattr(args, "writes", ()) if getattr(args, a, None)]
    new = [p for p in books if not p.exists()]
    try:
        with contextlib.ExitStack() as stack:
            for p in books:
                if p.parent.is_dir() and not p.is_dir():
                    stack.enter_context(write_lock(p, f"circuitbook {args.command}"))
            stack.enter_context(using_encoding(getattr(args, "encoding", None)))
            try:
                yield
            except CircuitbookError:
                for p in new:
                    close_books(p, since=mark)
                    for f in _sidecars(p):
                        f.unlink(missing_ok=True)
                raise
    finally:
        close_books(since=mark)
