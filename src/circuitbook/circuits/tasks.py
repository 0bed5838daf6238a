"""The registry of circuit analyses that :func:`~circuitbook.circuits.run_circuits` computes and stores.

An analysis plugs into the runner as one :class:`CircuitTask`: which units of work it has for a model
(``units``), how one unit is computed (``compute``, calling the public analysis function, so the book holds
exactly what the API returns) and how its result is written (``store``, with the ``book/circuits`` writers).
The runner walks :func:`registered_tasks` in registration order and, for every unit not yet done, calls ``compute``
and then writes the result and the unit's done mark in one transaction (so an interrupted run resumes after
the last whole unit). Adding an analysis is one module that calls :func:`register_task` once::

    register_task(CircuitTask(
        name="ov_norm",
        units=lambda cfg, settings, has_corpus: [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)],
        key=lambda lh: f"L{lh[0]}H{lh[1]}",
        compute=lambda ctx, lh: float(ov_matrix(ctx.basis, *lh).norm()),
        store=lambda conn, lh, v: store.store_head_scores(conn, *lh, {"ov_norm": v}),
    ))

Ordering is explicit: a task runs after every task named in its ``after`` (which must be registered
before it), and a task with ``needs_basis`` runs after :data:`SCALES_TASK`, whose stored norm scales the
shared :class:`~.basis.Basis` is made from. The built-in analyses register themselves in
:mod:`.builtin_tasks`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sqlite3
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .basis import Basis, CircuitError, NormScales, make_basis

if TYPE_CHECKING:  # pragma: no cover
    from ..book.core import Book
    from ..model.config import ModelConfig
    from .run import CircuitsSettings

SCALES_TASK = "scales"
"""The task that stores the norm scales (summary 'scales') every ``needs_basis`` task's basis is made from."""


class TaskError(CircuitError):
    """A circuits task cannot be registered: its name is taken or malformed, or it runs before what it needs."""


@dataclasses.dataclass
class TaskContext:
    """What a task's ``compute`` gets: the model, the book, the settings and the corpus of this run."""

    model: Any
    """The :class:`~circuitbook.model.Model` being analysed (``.cfg``, ``.weights``, ``.tokenizer``)."""

    book: "Book"
    """The book the run writes to. ``compute`` may read results of the tasks named in its ``after``."""

    settings: "CircuitsSettings"
    """This run's settings (k, k_rows, n_pairs, ...); changing any of them recomputes every task."""

    stories: str | list[str] | None
    """The corpus: a path, the story strings, or None when the run has none (see :meth:`batches`)."""

    _basis: Basis | None = dataclasses.field(default=None, repr=False)

    @property
    def basis(self) -> Basis:
        """The processed weights and tokens through the norm, with the norm scales stored by
        :data:`SCALES_TASK` (unit scales if none are stored); built on first use, once per run."""
        if self._basis is None:
            from ..book import circuits as store

            scales = store.summary(self.book, "scales")
            self._basis = make_basis(self.model, NormScales(**scales) if scales else None, self.settings.pos_window)
        return self._basis

    def batches(self) -> Iterable:
        """Token batches of the first ``settings.max_stories`` stories (a fresh iterator on every call);
        only for tasks whose ``units`` returned work with ``has_corpus`` true."""
        from itertools import islice

        from ..corpus import batches, read_stories

        if self.stories is None:
            raise CircuitError("this circuits task needs a corpus (stories) and the run has none")
        s, model = self.settings, self.model
        src = read_stories(self.stories) if isinstance(self.stories, str) else iter(self.stories)
        return batches(islice(src, s.max_stories), model.tokenizer, max_len=min(256, model.cfg.n_ctx), batch_size=4)


def _one_unit(cfg, settings, has_corpus) -> list:
    return [None]


@dataclasses.dataclass(frozen=True)
class CircuitTask:
    """One analysis the runner computes and stores, one unit of work at a time."""

    name: str
    """Unique name, e.g. 'bigram' or 'head'. It starts every done mark of the task (no ':' in it)."""

    compute: Callable[[TaskContext, Any], Any]
    """``compute(ctx, arg) -> result`` for one unit: call the public analysis function(s) with ``ctx.basis``
    (or ``ctx.model``) and the settings. Runs under ``torch.inference_mode``, outside any transaction; it
    never writes to the book."""

    store: Callable[[sqlite3.Connection, Any, Any], None]
    """``store(conn, arg, result)``: write one unit's result with the :mod:`circuitbook.book.circuits`
    writers. Runs inside the transaction that also writes the unit's done mark."""

    units: Callable[["ModelConfig", "CircuitsSettings", bool], list] = _one_unit
    """``units(cfg, settings, has_corpus) -> [arg, ...]``: the units of work for this model, in run order;
    ``[]`` when the task does not apply (e.g. composition in a one-layer model, or no corpus). Default
    ``[None]``: one unit."""

    key: Callable[[Any], str] = str
    """``key(arg) -> str``: the unit's part of its done mark ``f"{name}:{key(arg)}"`` (the mark is ``name``
    alone for the unit None). Marks identify finished work in existing books, so they never change."""

    after: tuple[str, ...] = ()
    """Names of tasks that must be complete before this one's first unit runs (e.g. 'virtual' reads the
    stored 'composition' scores). They must be registered before this task."""

    needs_basis: bool = True
    """``compute`` reads ``ctx.basis``: the task runs after :data:`SCALES_TASK`, whose scales the basis is
    made from. False for tasks that only use ``ctx.model`` (detectors) or make the scales themselves."""

    def done_mark(self, arg: Any) -> str:
        """The string stored in ``circuit_done`` once unit ``arg`` is in the book."""
        return self.name if arg is None else f"{self.name}:{self.key(arg)}"


_REGISTRY: dict[str, CircuitTask] = {}


def _builtins() -> None:
    """Register the built-in analyses first (importing the package already does; this keeps any import
    order safe: during that module's own import it is the partly run module and nothing happens)."""
    importlib.import_module(__name__.rpartition(".")[0] + ".builtin_tasks")


def register_task(task: CircuitTask) -> CircuitTask:
    """Add ``task`` after every task registered so far (the runner keeps this order) and return it.

    Raises TaskError if the name is taken or malformed, if an ``after`` name is not registered yet, or if a
    ``needs_basis`` task comes before :data:`SCALES_TASK` is registered."""
    _builtins()
    if not task.name or ":" in task.name:
        raise TaskError(f"circuits task name {task.name!r} must be non-empty and contain no ':'")
    if task.name in _REGISTRY:
        raise TaskError(f"a circuits task named {task.name!r} is already registered")
    missing = [a for a in task.after if a not in _REGISTRY]
    if missing:
        raise TaskError(f"circuits task {task.name!r} runs after {missing}, which must be registered first")
    if task.needs_basis and task.name != SCALES_TASK and SCALES_TASK not in _REGISTRY:
        raise TaskError(f"circuits task {task.name!r} needs the basis: register {SCALES_TASK!r} before it")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> CircuitTask:
    """Remove a registered task (for tests and interactive sessions); TaskError if it is unknown or another
    task runs after it."""
    if name not in _REGISTRY:
        raise TaskError(f"no circuits task named {name!r} is registered")
    users = [t.name for t in _REGISTRY.values() if name in t.after or (name == SCALES_TASK and t.needs_basis
                                                                           and t.name != name)]
    if users:
        raise TaskError(f"circuits task {name!r} is needed by {users}: unregister those first")
    return _REGISTRY.pop(name)


def registered_tasks() -> list[CircuitTask]:
    """Every registered task, in registration (= run) order, the built-in analyses first."""
    _builtins()
    return list(_REGISTRY.values())


def get_task(name: str) -> CircuitTask:
    """The registered task called ``name``; TaskError if there is none."""
    _builtins()
    if name not in _REGISTRY:
        raise TaskError(f"no circuits task named {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
