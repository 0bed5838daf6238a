"""Command line: ``circuitbook COMMAND ...``. Thin by design: parse, call the stage, print.

Each command lives in its own module here and exposes ``register(subparsers)``, which adds a subparser
whose ``func(args) -> int`` does the work. Errors caused by input (``CircuitbookError``) print one
line and exit with code 2; so do argument errors (an unknown option or choice, a missing argument: one
line naming the option, ``main`` returns 2 rather than raising SystemExit). ``circuitbook --version``
prints ``circuitbook <version>`` and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pkgutil
import sys
import warnings

from ..errors import CircuitbookError
from ..model.memory import keep_freed_memory


def package_version() -> str:
    """The installed distribution's version (``importlib.metadata``); the package's ``__version__`` when
    it runs uninstalled (the two agree: both come from pyproject.toml's version)."""
    try:
        return importlib.metadata.version("circuitbook")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


class UsageError(Exception):
    """An argument error argparse found (unknown option or choice, missing or malformed value)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, with argument errors raised (UsageError) instead of printing the usage and exiting, so that
    main reports them as every other bad input: one line, exit code 2. Subparsers are of this class too."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="circuitbook", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"circuitbook {package_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):  # _common, __main__ are not commands
            importlib.import_module(f"{__name__}.{m.name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"{e.prog}: error: {' '.join(str(e).splitlines())} (see {e.prog} --help)", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.filterwarnings("default", module="circuitbook")
    keep_freed_memory()  # every command runs forwards batch after batch (see model/memory.py)
    from ._common import guard

    try:
        with guard(args):  # locks the books it writes; a failure removes a book it created
            return int(args.func(args) or 0)
    except CircuitbookError as e:
        print(f"circuitbook {args.command}: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"circuitbook {args.command}: interrupted (finished work is saved; re-run to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
