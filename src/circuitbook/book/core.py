"""The book: one SQLite file holding every finding, label and note.

Layout: the core owns ``meta`` (model / corpus identity), ``vocab`` (token strings, so readers need no
tokenizer), ``units`` (one row per neuron or head: the user's label, notes and hypothesis status),
``label_history`` (append-only log of every edit) and ``runs`` (what ran, with its settings).
Each stage owns its own tables in its own module (``book/scan.py``...) and registers them with
:func:`register_component`: a name, a list of migrations (SQL scripts applied in order and recorded in
``schema_version``) and optional unit readers/renderers. ``Book.open`` applies whatever is missing, so
an old book upgrades in place and every schema change is a new migration, never an edit.

Units are keyed (kind, layer, idx) with kind a registered unit kind (``circuitbook.units``: "neuron",
"head", ...); ``idx`` is the unit's index in its layer ([0, d_mlp) for neurons, [0, n_heads) for heads).
The kind is checked against the registry in Python, not by the schema (migration 2 dropped the original
``CHECK (kind IN ('neuron', 'head'))``), so a new kind needs no schema change.
"""

from __future__ import annotations

from ..errors import CircuitbookError
from ..units import UnitError, UnitRef, all_units, kind_names, unit_kind

import contextlib
import dataclasses
import html
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

CORE_MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE vocab (token_id INTEGER PRIMARY KEY, str TEXT NOT NULL);
    CREATE TABLE units (
        kind TEXT NOT NULL CHECK (kind IN ('neuron', 'head')),
        layer INTEGER NOT NULL, idx INTEGER NOT NULL,
        label TEXT NOT NULL DEFAULT '', notes TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'none'
            CHECK (status IN ('none', 'hypothesis', 'supported', 'refuted', 'confirmed')),
        updated REAL,
        PRIMARY KEY (kind, layer, idx)
    );
    CREATE TABLE label_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL,
        label TEXT, notes TEXT, status TEXT, author TEXT, at REAL NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, stage TEXT NOT NULL, settings TEXT NOT NULL,
        started REAL NOT NULL, finished REAL, status TEXT NOT NULL DEFAULT 'running', summary TEXT
    );
    """,
    # 2: unit kinds come from the registry (circuitbook.units), so the kind column has no fixed CHECK list
    """
    CREATE TABLE units_v2 (
        kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL,
        label TEXT NOT NULL DEFAULT '', notes TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'none'
            CHECK (status IN ('none', 'hypothesis', 'supported', 'refuted', 'confirmed')),
        updated REAL,
        PRIMARY KEY (kind, layer, idx)
    );
    INSERT INTO units_v2 SELECT kind, layer, idx, label, notes, status, updated FROM units;
    DROP TABLE units;
    ALTER TABLE units_v2 RENAME TO units;
    """,
]
STATUSES = ("none", "hypothesis", "supported", "refuted", "confirmed")


class BookError(CircuitbookError, RuntimeError):
    """The book cannot be used as asked (wrong model, bad key, unreadable file...)."""


@dataclasses.dataclass
class Component:
    name: str
    migrations: list[str]
    # read_unit(book, kind, layer, idx) -> dict or None: this stage's findings about one unit
    read_unit: Callable[["Book", str, int, int], Any] | None = None
    # render_html(section) -> HTML fragment for notebooks (escaped by the renderer)
    render_html: Callable[[Any], str] | None = None
    # unit_context(book) -> dict merged into the model config that unit kinds count from (a stage whose
    # units are not fixed by the model, e.g. dictionary features, says here how many there are)
    unit_context: Callable[["Book"], dict] | None = None


_COMPONENTS: dict[str, Component] = {"core": Component("core", CORE_MIGRATIONS)}


def register_component(component: Component) -> None:
    """Stages call this at import time to own tables in the book."""
    _COMPONENTS[component.name] = component


@dataclasses.dataclass
class Unit:
    """One unit (neuron, head, ... see circuitbook.units) as the book knows it: the user's label/notes/status and each stage's section."""

    kind: str
    layer: int
    idx: int
    label: str = ""
    notes: str = ""
    status: str = "none"
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return unit_kind(self.kind).key(self.layer, self.idx)

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.kind, self.layer, self.idx)

    def __getitem__(self, section: str) -> Any:
        return self.sections[section]

    def _repr_html_(self) -> str:
        e = html.escape
        parts = [f"<div class='cb-unit'><h3>{e(self.kind)} {e(self.key)}"
                 f"{' — ' + e(self.label) if self.label else ''}</h3>"]
        if self.notes:
            parts.append(f"<p><i>{e(self.notes)}</i> [{e(self.status)}]</p>")
        for name, sec in self.sections.items():
            comp = _COMPONENTS.get(name)
            body = comp.render_html(sec) if comp and comp.render_html else f"<pre>{e(repr(sec)[:2000])}</pre>"
            parts.append(f"<details open><summary>{e(name)}</summary>{body}</details>")
        return "".join(parts) + "</div>"


class Book:
    """A handle on one book file. Thread-safe: one connection per thread, writes serialised by SQLite.

    >>> book = Book.open("tinystories.db")
    >>> book.neuron(0, 896).label
    """

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, create: bool = True, readonly: bool = False) -> "Book":
        path = Path(path)
        if not path.exists():
            if not create or readonly:
                raise BookError(f"no book at {path}")
            if not path.parent.exists():
                raise BookError(f"directory {path.parent} does not exist")
        elif path.is_dir():
            raise BookError(f"{path} is a directory, not a book file")
        book = cls(path, readonly=readonly)
        if not readonly:
            book.migrate()
        else:
            book.conn.execute("SELECT 1 FROM meta LIMIT 1")
        return book

    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            uri = f"file:{self.path}?mode=ro" if self.readonly else f"file:{self.path}"
            try:
                c = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                raise BookError(f"{self.path} is not a circuitbook book ({e})") from None
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=60000")
            c.row_factory = sqlite3.Row
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing write: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def migrate(self) -> None:
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER)")
            have = {r[0]: r[1] for r in c.execute("SELECT component, version FROM schema_version")}
            for name, comp in _COMPONENTS.items():
                for v, script in enumerate(comp.migrations[have.get(name, 0):], start=have.get(name, 0) + 1):
                    for stmt in _statements(script):
                        c.execute(stmt)
                    c.execute("INSERT OR REPLACE INTO schema_version VALUES (?, ?)", (name, v))

    def schema_versions(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT component, version FROM schema_version")}

    # ------------------------------------------------------------------ meta / vocab
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def bind_model(self, model, overwrite: bool = False) -> None:
        """Record which model this book describes; refuse a different one unless ``overwrite``.

        Stores the model's config, fingerprint and token strings (once)."""
        fp = model.fingerprint()
        have = self.get_meta("model_fingerprint")
        if have is not None and have != fp and not overwrite:
            raise BookError(f"{self.path} describes model {self.get_meta('model_source')!r} "
                            f"(fingerprint {have}), not {model.source!r} ({fp}); use another book or --overwrite")
        with self.transaction() as c:
            self.set_meta("model_fingerprint", fp, c)
            self.set_meta("model_source", model.source, c)
            self.set_meta("model_config", model.cfg.to_dict(), c)
            if model.tokenizer is not None and (have != fp or not self.vocab_size()):
                c.execute("DELETE FROM vocab")
                c.executemany("INSERT INTO vocab VALUES (?, ?)", enumerate(model.tokenizer.token_strs()))

    def vocab_size(self) -> int:
        return self.conn.execute("SELECT count(*) FROM vocab").fetchone()[0]

    def token_strs(self) -> list[str]:
        """Token strings indexed by id (empty if the book has none)."""
        if getattr(self, "_vocab_cache", None) is None or len(self._vocab_cache) != self.vocab_size():
            self._vocab_cache = [r[0] for r in self.conn.execute("SELECT str FROM vocab ORDER BY token_id")]
        return self._vocab_cache

    @property
    def config(self) -> dict | None:
        return self.get_meta("model_config")

    def unit_context(self) -> dict | None:
        """What unit kinds count from (``UnitKind.count(ctx, layer)``): the model config plus what each
        component contributes (``Component.unit_context``); None while the book has no model."""
        cfg = self.config
        if cfg is None:
            return None
        ctx = dict(cfg)
        for comp in _COMPONENTS.values():
            if comp.unit_context is not None:
                ctx.update(comp.unit_context(self))
        return ctx

    # ------------------------------------------------------------------ runs
    def start_run(self, stage: str, settings: dict) -> int:
        cur = self.conn.execute("INSERT INTO runs (stage, settings, started) VALUES (?, ?, ?)",
                                (stage, json.dumps(settings, sort_keys=True), time.time()))
        return cur.lastrowid

    def finish_run(self, run_id: int, summary: dict | None = None, status: str = "done") -> None:
        self.conn.execute("UPDATE runs SET finished = ?, status = ?, summary = ? WHERE id = ?",
                          (time.time(), status, json.dumps(summary or {}), run_id))

    def runs(self, stage: str | None = None) -> list[dict]:
        q = "SELECT * FROM runs" + (" WHERE stage = ?" if stage else "") + " ORDER BY id"
        return [dict(r) for r in self.conn.execute(q, (stage,) if stage else ())]

    # ------------------------------------------------------------------ units, labels, notes
    def _check_unit(self, kind: str, layer: int, idx: int) -> None:
        if kind not in kind_names():
            names = [repr(k) for k in kind_names()]
            more = f" (or {', '.join(names[2:])})" if len(names) > 2 else ""  # kinds added after the two built-ins
            raise BookError(f"unit kind must be {' or '.join(names[:2])}{more}, not {kind!r}")
        cfg = self.unit_context()
        if cfg is not None:
            try:
                unit_kind(kind).check(cfg, layer, idx)
            except UnitError as e:
                raise BookError(str(e)) from None

    def unit(self, kind: str, layer: int, idx: int) -> Unit:
        self._check_unit(kind, layer, idx)
        row = self.conn.execute("SELECT label, notes, status FROM units WHERE kind=? AND layer=? AND idx=?",
                                (kind, layer, idx)).fetchone()
        u = Unit(kind, layer, idx, *(tuple(row) if row else ()))
        for name, comp in _COMPONENTS.items():
            if comp.read_unit is not None:
                sec = comp.read_unit(self, kind, layer, idx)
                if sec is not None:
                    u.sections[name] = sec
        return u

    def neuron(self, layer: int, idx: int) -> Unit:
        return self.unit("neuron", layer, idx)

    def head(self, layer: int, idx: int) -> Unit:
        return self.unit("head", layer, idx)

    def set_label(self, kind: str, layer: int, idx: int, label: str | None = None, notes: str | None = None,
                  status: str | None = None, author: str = "") -> None:
        """Update any of label / notes / status for one unit (None = keep), logging the edit."""
        self._check_unit(kind, layer, idx)
        if status is not None and status not in STATUSES:
            raise BookError(f"status must be one of {STATUSES}, not {status!r}")
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO units (kind, layer, idx) VALUES (?, ?, ?)", (kind, layer, idx))
            c.execute(
                "UPDATE units SET label = coalesce(?, label), notes = coalesce(?, notes), "
                "status = coalesce(?, status), updated = ? WHERE kind=? AND layer=? AND idx=?",
                (label, notes, status, time.time(), kind, layer, idx))
            c.execute("INSERT INTO label_history (kind, layer, idx, label, notes, status, author, at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (kind, layer, idx, label, notes, status, author, time.time()))

    def labelled(self, kind: str | None = None) -> list[Unit]:
        """Units with a non-empty label (without stage sections: cheap)."""
        q = "SELECT kind, layer, idx, label, notes, status FROM units WHERE label != ''"
        q += " AND kind = ?" if kind else ""
        return [Unit(*r) for r in self.conn.execute(q + " ORDER BY kind, layer, idx", (kind,) if kind else ())]

    def label_history(self, kind: str, layer: int, idx: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM label_history WHERE kind=? AND layer=? AND idx=? ORDER BY id", (kind, layer, idx))]

    def units(self, kind: str | None = None, layer: int | None = None) -> Iterator[tuple[str, int, int]]:
        """Every (kind, layer, idx) of the bound model, in order (kinds in registry order: neurons, heads...)."""
        cfg = self.unit_context()
        if cfg is None:
            raise BookError("the book is not bound to a model yet (run a scan or circuits first)")
        if kind is not None and kind not in kind_names():
            self._check_unit(kind, 0, 0)
        for u in all_units(cfg, kind, layer):
            yield u.astuple()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3's execute runs one at a time)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
