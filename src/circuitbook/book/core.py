"""The book: one SQLite file holding every finding, label and note.

Layout: the core owns ``meta`` (model / corpus identity), ``vocab`` (token strings, so readers need no
tokenizer), ``units`` (one row per neuron or head: the user's label, notes and hypothesis status),
``label_history`` (append-only log of every edit) and ``runs`` (what ran, with its settings).
Each stage owns its own tables in its own module (``book/scan.py``...) and registers them with
:func:`register_component`: a name, a list of migrations (SQL scripts applied in order and recorded in
``schema_version``) and optional unit readers/renderers. ``Book.open`` applies whatever is missing, so
an old book upgrades in place and every schema change is a new migration, never an edit.

Writers: :func:`write_lock` is an advisory lock (``flock`` on ``BOOK.lock``, removed on release) that every
writing command holds for its whole run, so a second process asked to write the same book refuses with a
message naming the holder instead of interleaving with it. :func:`close_books` closes every connection this
process holds on a book (the CLI calls it before removing a book a failed command created).

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
import fcntl
import json
import math
import os
import sqlite3
import threading
import time
import weakref
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


def finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, +-inf; Python, NumPy or 0-d torch) replaced by None, recursively
    through dicts, lists and tuples: what book writes store, so NaN never reaches a book (NULL / JSON null)."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(finite(v) for v in x) if isinstance(x, list) else tuple(finite(v) for v in x)
    if isinstance(x, bool) or x is None or isinstance(x, (int, str, bytes)):
        return x
    try:
        f = float(x)
    except (TypeError, ValueError):
        return x
    return f if math.isfinite(f) else None


class BookError(CircuitbookError, RuntimeError):
    """The book cannot be used as asked (wrong model, bad key, unreadable file...)."""


class BookLockedError(BookError):
    """Another process holds the book's write lock."""


class _Connection(sqlite3.Connection):
    """sqlite3's connection, weak-referenceable (the plain one is not) so close_books can find it."""


# (book path, connection) of every connection this process opened; a connection outlives its Book handle
# until the cyclic garbage collector runs (sqlite3 keeps a reference cycle), so handles alone cannot find them
_CONNS: list[tuple[int, Path, "weakref.ref[_Connection]"]] = []  # (serial number, path, connection)
_CONNS_LOCK = threading.Lock()
_SERIAL = [0]


def connection_mark() -> int:
    """A mark for :func:`close_books`' ``since``: connections opened after this call are newer."""
    return _SERIAL[0]


def close_books(path: str | Path | None = None, since: int = 0) -> None:
    """Close the connections (all threads) this process opened on the book at ``path`` (None: on every book)
    after ``since`` (a :func:`connection_mark`; 0: ever). The CLI closes what one command opened."""
    want = None if path is None else Path(path).resolve()
    with _CONNS_LOCK:
        keep = []
        for n, p, ref in _CONNS:
            c = ref()
            if c is None:
                continue
            if n > since and (want is None or p == want):
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            else:
                keep.append((n, p, ref))
        _CONNS[:] = keep


def lock_path(path: str | Path) -> Path:
    return Path(str(path) + ".lock")


@contextlib.contextmanager
def write_lock(path: str | Path, what: str = "", wait: float = 0.0) -> Iterator[None]:
    """Hold the book's advisory write lock for the block; refuse (BookLockedError) if another process holds
    it for longer than ``wait`` seconds. The lock file is removed on release; a killed holder's lock is
    released by the kernel and its stale file reused."""
    lock = lock_path(path)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise BookError(f"cannot lock {path}: {e.strerror} ({lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if time.monotonic() >= deadline:
                raise BookLockedError(f"{path} is being written by another process ({_holder(holder)}); wait for "
                                      f"it to finish or use another book") from None
            time.sleep(0.1)
            continue
        try:  # the holder we waited for may have removed the file: lock the one at the path
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _holder(text: str) -> str:
    try:
        d = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d["since"]))
        return f"pid {d['pid']}: {d.get('what') or 'circuitbook'}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "unknown holder"


@dataclasses.dataclass
class Component:
    """A stage's part of the book: its tables (migrations), how to read one unit's section, and the one
    HTML renderer of that section (used by the web pages, the static export and notebooks alike)."""

    name: str
    migrations: list[str]
    # read_unit(book, kind, layer, idx) -> dict or None: this stage's findings about one unit
    read_unit: Callable[["Book", str, int, int], Any] | None = None
    # render_html(section, ctx: book.render.Ctx) -> HTML fragment; it escapes every string it writes
    render_html: Callable[[Any, Any], str] | None = None
    # unit_context(book) -> dict merged into the model config that unit kinds count from (a stage whose
    # units are not fixed by the model, e.g. dictionary features, says here how many there are)
    unit_context: Callable[["Book"], dict] | None = None


_COMPONENTS: dict[str, Component] = {"core": Component("core", CORE_MIGRATIONS)}


def register_component(component: Component) -> None:
    """Stages call this at import time to own tables in the book (and render their section)."""
    _COMPONENTS[component.name] = component


def unregister_component(name: str) -> None:
    """Forget a component (test-only components clean up with this); its tables stay in existing books."""
    _COMPONENTS.pop(name, None)


def component(name: str) -> Component | None:
    """The registered component called ``name``, or None."""
    return _COMPONENTS.get(name)


def components() -> list[Component]:
    """Every registered component, in registration order (core first)."""
    return list(_COMPONENTS.values())


def section_renderer(name: str) -> Callable[[Any, Any], str] | None:
    """The HTML renderer ``fn(section, ctx)`` of component ``name``'s section, or None (generic view)."""
    comp = _COMPONENTS.get(name)
    return comp.render_html if comp is not None else None


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
    # the book's token strings (set by Book.unit) so the notebook view names token ids as the web does
    token_strs: list[str] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return unit_kind(self.kind).key(self.layer, self.idx)

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.kind, self.layer, self.idx)

    def __getitem__(self, section: str) -> Any:
        return self.sections[section]

    def _repr_html_(self) -> str:
        """The same view as the web page's sections (book.render.unit_html), inline in a notebook."""
        from .render import Ctx, unit_html

        return unit_html(self, Ctx(token_strs=self.token_strs))


class Book:
    """A handle on one book file. Thread-safe: one connection per thread, writes serialised by SQLite.

    >>> book = Book.open("tinystories.db")
    >>> book.neuron(0, 896).label
    """

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []  # every thread's connection, for close_all

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
        elif not readonly:
            cls.check(path)  # never add circuitbook's tables to a file that is not a book (someone else's database)
        book = cls(path, readonly=readonly)
        if not readonly:
            book.migrate()
        else:
            try:
                book.conn.execute("SELECT 1 FROM meta LIMIT 1")
            except sqlite3.DatabaseError as e:
                book.close_all()
                raise BookError(f"{path} is not a circuitbook book ({e})") from None
        return book

    @staticmethod
    def check(path: str | Path, must_exist: bool = False) -> bool:
        """Refuse a path that cannot be (or become) a book, writing nothing; return whether a book is there.

        An existing file must be an SQLite file holding circuitbook's tables (never someone else's database,
        which ``open`` would add tables to); a new one needs its directory."""
        path = Path(path)
        if path.is_dir():
            raise BookError(f"{path} is a directory, not a book file")
        if not path.exists():
            if must_exist:
                raise BookError(f"no book at {path}")
            if not path.parent.is_dir():
                raise BookError(f"directory {path.parent} does not exist")
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise BookError(f"{path} cannot be read ({e.strerror})") from None
        if not head:
            return False  # an empty file: SQLite makes a new database of it
        if head != b"SQLite format 3\x00":
            raise BookError(f"{path} is not a circuitbook book (not an SQLite database file)")
        b = Book(path, readonly=True)
        try:
            names = {r[0] for r in b.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise BookError(f"{path} is not a circuitbook book ({e})") from None
        finally:
            b.close_all()
        if names and not {"meta", "schema_version"} <= names:
            raise BookError(f"{path} is an SQLite database but not a circuitbook book (no meta / schema_version "
                            f"tables)")
        return True

    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                c = self._connect_readonly() if self.readonly else self._connect(f"file:{self.path}")
                if not self.readonly:
                    c.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                raise BookError(f"{self.path} is not a circuitbook book ({e})") from None
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=60000")
            c.row_factory = sqlite3.Row
            self._local.conn = c
            self._conns.append(c)
        return c

    def _connect(self, uri: str) -> sqlite3.Connection:
        c = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False,
                            factory=_Connection)
        with _CONNS_LOCK:
            _SERIAL[0] += 1
            _CONNS[:] = [x for x in _CONNS if x[2]() is not None] + [(_SERIAL[0], self.path.resolve(), weakref.ref(c))]
        return c

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write. Opened read-write with ``query_only`` where the file allows it, so
        that closing it removes the -wal/-shm files a ``mode=ro`` connection would leave behind."""
        try:
            c = self._connect(f"file:{self.path}?mode=rw")
        except sqlite3.OperationalError:  # no write permission: a true read-only open
            return self._connect(f"file:{self.path}?mode=ro")
        c.execute("PRAGMA query_only=ON")
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def close_all(self) -> None:
        """Close the connections of every thread (the handle reconnects on next use in this thread)."""
        for c in self._conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._conns.clear()
        self._local = threading.local()

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
        if (have == fp and self.get_meta("model_source") == model.source
                and self.get_meta("model_config") == model.cfg.to_dict()
                and (model.tokenizer is None or self.vocab_size())):
            return  # already bound to this very model: write nothing (the book's bytes stay as they are)
        with self.transaction() as c:
            self.set_meta("model_fingerprint", fp, c)
            self.set_meta("model_source", model.source, c)
            self.set_meta("model_config", model.cfg.to_dict(), c)
            if model.tokenizer is not None and (have != fp or not self.vocab_size()):
                c.execute("DELETE FROM vocab")
                c.executemany("INSERT INTO vocab VALUES (?, ?)", enumerate(model.tokenizer.token_strs()))

    def copy_vocab(self, other: "Book", conn: sqlite3.Connection) -> None:
        """Replace this book's token strings with ``other``'s (inside the caller's transaction)."""
        conn.execute("DELETE FROM vocab")
        conn.executemany("INSERT INTO vocab VALUES (?, ?)",
                         other.conn.execute("SELECT token_id, str FROM vocab ORDER BY token_id").fetchall())

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
        have = self._migrated()
        for comp in _COMPONENTS.values():
            if comp.unit_context is not None and comp.name in have:
                ctx.update(comp.unit_context(self))
        return ctx

    def _migrated(self) -> set[str]:
        """Components whose tables this book has (a book opened read-only may predate a component)."""
        return {n for n, v in self.schema_versions().items() if v} | {
            n for n, c in _COMPONENTS.items() if not c.migrations}
    # ------------------------------------------------------------------ file upkeep
    def vacuum(self) -> None:
        """Rewrite the file without its free pages (after a large table or blob was dropped)."""
        self.conn.execute("VACUUM")

    def checkpoint_wal(self) -> None:
        """Fold the write-ahead log into the main file and truncate it."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def results_fingerprint(self) -> tuple:
        """A cheap value that changes whenever a stage writes results: stages record their runs (``runs``)
        and settings (``meta``), and migrations add components. Label edits change none of these, so a cache
        keyed by it (the web index's summaries) survives editing."""
        runs = tuple(self.conn.execute(
            "SELECT count(*), max(id), max(finished), group_concat(status) FROM runs").fetchone())
        meta = hash(tuple(tuple(r) for r in self.conn.execute("SELECT key, value FROM meta ORDER BY key")))
        return runs, meta, tuple(sorted(self.schema_versions().items()))

    # ------------------------------------------------------------------ runs
    def start_run(self, stage: str, settings: dict) -> int:
        cur = self.conn.execute("INSERT INTO runs (stage, settings, started) VALUES (?, ?, ?)",
                                (stage, json.dumps(finite(settings), sort_keys=True), time.time()))
        return cur.lastrowid

    def finish_run(self, run_id: int, summary: dict | None = None, status: str = "done") -> None:
        self.conn.execute("UPDATE runs SET finished = ?, status = ?, summary = ? WHERE id = ?",
                          (time.time(), status, json.dumps(finite(summary or {})), run_id))

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

    def unit_label(self, kind: str, layer: int, idx: int) -> tuple[str, str, str]:
        """(label, notes, status) of one unit, ("", "", "none") when never edited. No key check, no sections."""
        row = self.conn.execute("SELECT label, notes, status FROM units WHERE kind=? AND layer=? AND idx=?",
                                (kind, layer, idx)).fetchone()
        return tuple(row) if row else ("", "", "none")

    def unit_labels(self) -> dict[tuple[str, int, int], tuple[str, str, str]]:
        """{(kind, layer, idx): (label, notes, status)} for every unit with a row (ever edited)."""
        return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in self.conn.execute(
            "SELECT kind, layer, idx, label, notes, status FROM units")}

    def unit(self, kind: str, layer: int, idx: int) -> Unit:
        self._check_unit(kind, layer, idx)
        u = Unit(kind, layer, idx, *self.unit_label(kind, layer, idx), token_strs=self.token_strs() or None)
        have = self._migrated()
        for name, comp in _COMPONENTS.items():
            if comp.read_unit is not None and name in have:
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
