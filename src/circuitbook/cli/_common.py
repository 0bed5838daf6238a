"""Argument helpers shared by commands."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import CircuitbookError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


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
