"""The scan's tables in the book, and the queries other stages and the web use to read them.

Schema (component "scan", version 1):

    scan_state      one row: the scan's identity (model, corpus hash, settings), its progress and its
                    resumable state (a torch-serialised blob, NULL once a finished scan drops it)
    scan_neurons    (layer, idx) -> count, mean, std, min, max, fire_rate, hist_exp, hist (JSON counts)
    scan_heads      (layer, idx) -> count, bos, self, prev, dist, entropy (means over query positions)
    scan_examples   (kind, layer, idx, section, band, rank) -> value, story, offset, focus, extra,
                    tokens (int32 blob), vals (float32 blob)
    scan_token_means (layer, idx, rank) -> token_id, mean, count
    scan_head_pairs  (layer, idx, rank) -> q_token, k_token, mass, count
    scan_unit_stats  (kind, layer, idx) -> the scan_neurons columns, for the other activation kinds the scan
                     recorded (dictionary features: ``layer`` is the dictionary's number)   (migration 2)
    scan_unit_token_means (kind, layer, idx, rank) -> token_id, mean, count: scan_token_means of those kinds

Conventions:
  * an example is a window of ``before + 1 + after`` tokens around a focus token; ``focus`` is the focus's
    index in the window, ``story`` the story's index in the corpus and ``offset`` the focus's token
    offset in the story (0 = first token after the BOS separator). Token ids are -1 and values NaN where
    the window runs past the sequence.
  * neuron examples: ``vals`` is the neuron's activation on every window token. Head examples: ``vals``
    is the attention from the focus (query) to every window token (NaN after the query), ``value`` the
    strongest attention to a real token and ``extra`` the distance (in tokens) to that key.
  * sections: "top" (rank 0 = largest value; ties go to the earliest example) and "quantile" (``band``
    = band column: signed band band-8 covers values in ((band-8)*M/8, (band-7)*M/8] with M = 2**hist_exp,
    rank = sample order).
  * histograms: ``hist`` has 128 counts; bin b covers ((b-64)*w, (b-63)*w], w = 2**hist_exp / 64.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import time
from typing import Any

import numpy as np

from .core import Book, BookError, Component, register_component

MIGRATIONS = [
    """
    CREATE TABLE scan_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        identity TEXT NOT NULL, progress TEXT NOT NULL, state BLOB, complete INTEGER NOT NULL DEFAULT 0,
        updated REAL
    );
    CREATE TABLE scan_neurons (
        layer INTEGER NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL, mean REAL, std REAL,
        min REAL, max REAL, fire_rate REAL, hist_exp INTEGER, hist TEXT,
        PRIMARY KEY (layer, idx)
    );
    CREATE TABLE scan_heads (
        layer INTEGER NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL, bos REAL, self REAL, prev REAL,
        dist REAL, entropy REAL,
        PRIMARY KEY (layer, idx)
    );
    CREATE TABLE scan_examples (
        kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL, section TEXT NOT NULL,
        band INTEGER NOT NULL DEFAULT -1, rank INTEGER NOT NULL, value REAL NOT NULL, story INTEGER NOT NULL,
        offset INTEGER NOT NULL, focus INTEGER NOT NULL, extra INTEGER NOT NULL DEFAULT 0,
        tokens BLOB NOT NULL, vals BLOB NOT NULL,
        PRIMARY KEY (kind, layer, idx, section, band, rank)
    ) WITHOUT ROWID;
    CREATE TABLE scan_token_means (
        layer INTEGER NOT NULL, idx INTEGER NOT NULL, rank INTEGER NOT NULL, token_id INTEGER NOT NULL,
        mean REAL NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (layer, idx, rank)
    );
    CREATE TABLE scan_head_pairs (
        layer INTEGER NOT NULL, idx INTEGER NOT NULL, rank INTEGER NOT NULL, q_token INTEGER NOT NULL,
        k_token INTEGER NOT NULL, mass REAL NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (layer, idx, rank)
    );
    """,
    """
    CREATE TABLE scan_unit_stats (
        kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL, mean REAL,
        std REAL, min REAL, max REAL, fire_rate REAL, hist_exp INTEGER, hist TEXT,
        PRIMARY KEY (kind, layer, idx)
    );
    CREATE TABLE scan_unit_token_means (
        kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL, rank INTEGER NOT NULL,
        token_id INTEGER NOT NULL, mean REAL NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (kind, layer, idx, rank)
    );
    """,
]

RESULT_TABLES = ("scan_neurons", "scan_heads", "scan_examples", "scan_token_means", "scan_head_pairs",
                 "scan_unit_stats", "scan_unit_token_means")
N_BANDS = 16
HALF = 64


# ------------------------------------------------------------------ writes (the scan stage's driver calls these)
def clear(conn: sqlite3.Connection, state: bool = True) -> None:
    """Empty the result tables (and, with ``state``, the checkpoint row), inside the caller's transaction."""
    for t in RESULT_TABLES + (("scan_state",) if state else ()):
        conn.execute(f"DELETE FROM {t}")


def save_state_row(conn: sqlite3.Connection, identity: dict, progress: dict, blob: bytes | None,
                   complete: bool) -> None:
    """Write the one checkpoint row: the scan's identity, progress and serialised state (None: dropped)."""
    conn.execute(
        "INSERT OR REPLACE INTO scan_state (id, identity, progress, state, complete, updated) VALUES (1, ?, ?, ?, ?, ?)",
        (json.dumps(identity, sort_keys=True), json.dumps(progress), blob, int(complete), time.time()))


def load_state_row(book: Book) -> tuple[dict, dict, bytes | None, bool] | None:
    """(identity, progress, state blob or None, complete) of the checkpoint row, or None without a scan."""
    row = book.conn.execute("SELECT identity, progress, state, complete FROM scan_state WHERE id = 1").fetchone()
    if row is None:
        return None
    return json.loads(row[0]), json.loads(row[1]), row[2], bool(row[3])


def insert_neurons(conn: sqlite3.Connection, rows) -> None:
    """rows: (layer, idx, count, mean, std, min, max, fire_rate, hist_exp, hist JSON)."""
    conn.executemany("INSERT INTO scan_neurons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def insert_examples(conn: sqlite3.Connection, rows) -> None:
    """rows: (kind, layer, idx, section, band, rank, value, story, offset, focus, extra, tokens, vals)."""
    conn.executemany("INSERT INTO scan_examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def insert_token_means(conn: sqlite3.Connection, rows) -> None:
    """rows: (layer, idx, rank, token_id, mean, count)."""
    conn.executemany("INSERT INTO scan_token_means VALUES (?, ?, ?, ?, ?, ?)", rows)


def insert_unit_stats(conn: sqlite3.Connection, kind: str, rows) -> None:
    """rows: insert_neurons' rows, for units of another activation kind."""
    conn.executemany("INSERT INTO scan_unit_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [(kind, *r) for r in rows])


def insert_unit_token_means(conn: sqlite3.Connection, kind: str, rows) -> None:
    """rows: insert_token_means' rows, for units of another activation kind."""
    conn.executemany("INSERT INTO scan_unit_token_means VALUES (?, ?, ?, ?, ?, ?, ?)", [(kind, *r) for r in rows])


def insert_heads(conn: sqlite3.Connection, rows) -> None:
    """rows: (layer, idx, count, bos, self, prev, dist, entropy)."""
    conn.executemany("INSERT INTO scan_heads VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def insert_head_pairs(conn: sqlite3.Connection, rows) -> None:
    """rows: (layer, idx, rank, q_token, k_token, mass, count)."""
    conn.executemany("INSERT INTO scan_head_pairs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def counts(book: Book) -> tuple[int, int, int, bool]:
    """(neurons stored, dead neurons (never fired), heads stored, scan complete) for the scan's summary."""
    c = book.conn
    n_neurons, dead = c.execute("SELECT count(*), coalesce(sum(fire_rate = 0), 0) FROM scan_neurons").fetchone()
    n_heads = c.execute("SELECT count(*) FROM scan_heads").fetchone()[0]
    row = c.execute("SELECT complete FROM scan_state WHERE id = 1").fetchone()
    return n_neurons, dead, n_heads, bool(row[0])


# ------------------------------------------------------------------ result types
@dataclasses.dataclass
class Example:
    """One context window. tokens/values: [width] (same order, left to right); focus: index of the
    focus token in the window; value: the unit's value there (head: strongest attention to a real token)."""

    kind: str
    layer: int
    idx: int
    section: str  # "top" | "quantile"
    band: int  # band column for "quantile" (see band_range), -1 for "top"
    rank: int
    value: float
    story: int
    offset: int
    focus: int
    tokens: list[int]
    values: list[float]
    key_distance: int | None = None  # heads: query position - position of the most attended key

    def token_strs(self, book: Book) -> list[str]:
        strs = book.token_strs()
        return ["" if t < 0 else strs[t] if t < len(strs) else f"<{t}>" for t in self.tokens]

    def text(self, book: Book) -> str:
        return "".join(self.token_strs(book))


@dataclasses.dataclass
class NeuronStats:
    """Activation statistics of one neuron over every counted token (BOS and padding excluded).
    hist_counts [128] over hist_edges [129] ascending (see module doc)."""

    layer: int
    idx: int
    count: int
    mean: float
    std: float
    min: float
    max: float
    fire_rate: float  # fraction of tokens with activation > 0
    hist_exp: int
    hist_counts: list[int]

    @property
    def hist_edges(self) -> list[float]:
        w = 2.0 ** self.hist_exp / HALF
        return [b * w for b in range(-HALF, HALF + 1)]


@dataclasses.dataclass
class HeadStats:
    """Means over counted query positions: attention to BOS, to self, to the previous token, mean
    attention distance (tokens) and entropy (nats)."""

    layer: int
    idx: int
    count: int
    bos: float
    self: float
    prev: float
    dist: float
    entropy: float


@dataclasses.dataclass
class TokenMean:
    token_id: int
    token: str
    mean: float
    count: int


@dataclasses.dataclass
class TokenPair:
    q_token_id: int
    k_token_id: int
    q_token: str
    k_token: str
    mass: float  # summed attention weight (weights >= the scan's pair_min only)
    count: int


def band_range(band: int, hist_exp: int) -> tuple[float, float]:
    """(lo, hi] value range of quantile band column ``band`` of a neuron with ``hist_exp``."""
    w = 2.0 ** hist_exp / (N_BANDS // 2)
    return (band - N_BANDS // 2) * w, (band - N_BANDS // 2 + 1) * w


# ------------------------------------------------------------------ queries
def scan_info(book: Book) -> dict | None:
    """The scan's identity (model fingerprint, corpus hash, settings), progress and whether it finished;
    None if the book was never scanned."""
    row = book.conn.execute("SELECT identity, progress, complete FROM scan_state WHERE id = 1").fetchone()
    if row is None:
        return None
    return {"identity": json.loads(row[0]), "progress": json.loads(row[1]), "complete": bool(row[2])}


def neuron_stats(book: Book, layer: int, idx: int) -> NeuronStats | None:
    r = book.conn.execute("SELECT * FROM scan_neurons WHERE layer=? AND idx=?", (layer, idx)).fetchone()
    if r is None:
        return None
    return NeuronStats(r["layer"], r["idx"], r["count"], r["mean"], r["std"], r["min"], r["max"],
                       r["fire_rate"], r["hist_exp"], json.loads(r["hist"]))


def unit_stats(book: Book, kind: str, layer: int, idx: int) -> NeuronStats | None:
    """The activation statistics of a unit of an activation kind: a neuron's (scan_neurons), or those the
    scan recorded for another kind (scan_unit_stats: dictionary features)."""
    if kind == "neuron":
        return neuron_stats(book, layer, idx)
    r = book.conn.execute("SELECT * FROM scan_unit_stats WHERE kind=? AND layer=? AND idx=?",
                          (kind, layer, idx)).fetchone()
    if r is None:
        return None
    return NeuronStats(r["layer"], r["idx"], r["count"], r["mean"], r["std"], r["min"], r["max"],
                       r["fire_rate"], r["hist_exp"], json.loads(r["hist"]))


def head_stats(book: Book, layer: int, idx: int) -> HeadStats | None:
    r = book.conn.execute("SELECT * FROM scan_heads WHERE layer=? AND idx=?", (layer, idx)).fetchone()
    if r is None:
        return None
    return HeadStats(*(r[c] for c in ("layer", "idx", "count", "bos", "self", "prev", "dist", "entropy")))


def _example(r) -> Example:
    tokens = np.frombuffer(r["tokens"], dtype=np.int32).tolist()
    vals = np.frombuffer(r["vals"], dtype=np.float32).tolist()
    return Example(r["kind"], r["layer"], r["idx"], r["section"], r["band"], r["rank"], r["value"], r["story"],
                   r["offset"], r["focus"], tokens, vals, r["extra"] if r["kind"] == "head" else None)


def top_examples(book: Book, kind: str, layer: int, idx: int, k: int | None = None) -> list[Example]:
    """The unit's strongest examples, best first (neuron: activation; head: strongest attention)."""
    q = "SELECT * FROM scan_examples WHERE kind=? AND layer=? AND idx=? AND section='top' ORDER BY rank"
    rows = book.conn.execute(q + ("" if k is None else f" LIMIT {int(k)}"), (kind, layer, idx))
    return [_example(r) for r in rows]


def quantile_examples(book: Book, layer: int, idx: int, per_band: int | None = None,
                      kind: str = "neuron") -> dict[int, list[Example]]:
    """A neuron's (or another activation unit's) sampled examples by activation band: {band column:
    [examples]}, highest band first. Use :func:`band_range` with its ``hist_exp`` for each band's range."""
    rows = book.conn.execute("SELECT * FROM scan_examples WHERE kind=? AND layer=? AND idx=? "
                             "AND section='quantile' ORDER BY band DESC, rank", (kind, layer, idx))
    out: dict[int, list[Example]] = {}
    for r in rows:
        lst = out.setdefault(r["band"], [])
        if per_band is None or len(lst) < per_band:
            lst.append(_example(r))
    return out


def token_means(book: Book, layer: int, idx: int, k: int | None = None, kind: str = "neuron") -> list[TokenMean]:
    """Tokens with the highest mean activation of the neuron (or another activation unit) over their
    occurrences (which the scan requires to be >= its token_min_count), highest first."""
    strs = book.token_strs()
    lim = "" if k is None else f" LIMIT {int(k)}"
    if kind == "neuron":
        rows = book.conn.execute("SELECT token_id, mean, count FROM scan_token_means WHERE layer=? AND idx=? "
                                 "ORDER BY rank" + lim, (layer, idx))
    else:
        rows = book.conn.execute("SELECT token_id, mean, count FROM scan_unit_token_means WHERE kind=? AND layer=? "
                                 "AND idx=? ORDER BY rank" + lim, (kind, layer, idx))
    return [TokenMean(t, strs[t] if t < len(strs) else f"<{t}>", m, c) for t, m, c in rows]


def head_pairs(book: Book, layer: int, idx: int, k: int | None = None) -> list[TokenPair]:
    """(query token -> key token) pairs the head puts the most attention mass on, largest first."""
    strs = book.token_strs()
    s = lambda t: strs[t] if t < len(strs) else f"<{t}>"  # noqa: E731
    q = "SELECT q_token, k_token, mass, count FROM scan_head_pairs WHERE layer=? AND idx=? ORDER BY rank"
    rows = book.conn.execute(q + ("" if k is None else f" LIMIT {int(k)}"), (layer, idx))
    return [TokenPair(a, b, s(a), s(b), m, c) for a, b, m, c in rows]


def unit_table(book: Book, kind: str = "neuron", layer: int | None = None, order_by: str | None = None,
               descending: bool = True, limit: int | None = None, where: str | None = None) -> list[dict]:
    """Rows of scan_neurons / scan_heads as dicts (without histograms) for listing, sorting and filtering.

    ``order_by``: a column (neurons: count mean std min max fire_rate; heads: bos self prev dist entropy);
    ``where``: a filter on those columns written as an expression, e.g. ``"fire_rate < 0.01"``; only
    column names, numbers and comparison operators are accepted."""
    table, cols = (("scan_neurons", ("layer", "idx", "count", "mean", "std", "min", "max", "fire_rate"))
                   if kind == "neuron" else
                   ("scan_heads", ("layer", "idx", "count", "bos", "self", "prev", "dist", "entropy")))
    if kind not in ("neuron", "head"):
        raise BookError(f"kind must be 'neuron' or 'head', not {kind!r}")
    if order_by is not None and order_by not in cols:
        raise BookError(f"cannot order {kind}s by {order_by!r}; columns: {', '.join(cols)}")
    q = f"SELECT {', '.join(cols)} FROM {table} WHERE 1=1"
    args: list[Any] = []
    if layer is not None:
        q += " AND layer = ?"
        args.append(layer)
    if where:
        import re

        for word in re.findall(r"[A-Za-z_]+", where):
            if word not in cols and word.upper() not in ("AND", "OR", "NOT"):
                raise BookError(f"filter {where!r}: unknown column {word!r}; columns: {', '.join(cols)}")
        if not re.fullmatch(r"[A-Za-z_0-9.\s<>=!()+\-*/eE]*", where):
            raise BookError(f"filter {where!r}: only columns, numbers and comparisons are allowed")
        q += f" AND ({where})"
    q += f" ORDER BY {order_by} {'DESC' if descending else 'ASC'}, layer, idx" if order_by else " ORDER BY layer, idx"
    if limit is not None:
        q += f" LIMIT {int(limit)}"
    return [dict(r) for r in book.conn.execute(q, args)]


# ------------------------------------------------------------------ unit section + rendering
@dataclasses.dataclass
class ScanSection:
    """What ``book.neuron(l, i)["scan"]`` / ``book.head(l, h)["scan"]`` holds."""

    stats: NeuronStats | HeadStats
    top: list[Example]
    quantiles: dict[int, list[Example]]
    tokens: list[TokenMean]
    pairs: list[TokenPair]
    token_strs: list[str] = dataclasses.field(repr=False, default_factory=list)


def read_unit(book: Book, kind: str, layer: int, idx: int) -> ScanSection | None:
    if kind != "head":  # neurons, and any other activation kind the scan recorded (dictionary features)
        st = unit_stats(book, kind, layer, idx)
        if st is None:
            return None
        return ScanSection(st, top_examples(book, kind, layer, idx), quantile_examples(book, layer, idx, kind=kind),
                           token_means(book, layer, idx, kind=kind), [], book.token_strs())
    st = head_stats(book, layer, idx)
    if st is None:
        return None
    return ScanSection(st, top_examples(book, kind, layer, idx), {}, [], head_pairs(book, layer, idx),
                       book.token_strs())


def _strs(ex: Example, strs: list[str]) -> list[str]:
    return ["" if t < 0 else strs[t] if t < len(strs) else f"<{t}>" for t in ex.tokens]


def _examples_html(exs: list[Example], strs: list[str], scale: float | None, n: int) -> str:
    from .render import esc, fmt, tokens_html

    out = ["<div class='cb-examples'>"]
    for ex in exs[:n]:
        keep = [i for i, t in enumerate(ex.tokens) if t >= 0]
        ex_strs = _strs(ex, strs)  # once per example, not once per token
        toks = [ex_strs[i] for i in keep]
        vals = [ex.values[i] if math.isfinite(ex.values[i]) else 0.0 for i in keep]
        mark = keep.index(ex.focus) if ex.focus in keep else None
        meta = f"{fmt(ex.value)} · story {ex.story} tok {ex.offset}"
        if ex.key_distance is not None:
            meta += f" · key -{ex.key_distance}"
        out.append(f"<div class='ex'><span class='exmeta'>{esc(meta)}</span> {tokens_html(toks, vals, scale, mark)}</div>")
    return "".join(out) + "</div>"


def render_html(sec: ScanSection, ctx: Any = None) -> str:
    """HTML for one unit's scan section; every corpus string goes through html.escape (render.esc)."""
    from .render import bars_html, esc, fmt, histogram_svg

    strs = sec.token_strs
    st = sec.stats
    parts = []
    if isinstance(st, NeuronStats):
        parts.append(f"<p>mean {fmt(st.mean)} · std {fmt(st.std)} · min {fmt(st.min)} · max {fmt(st.max)} · "
                     f"fires (&gt;0) on {100 * st.fire_rate:.2f}% of {st.count} tokens</p>")
        parts.append(histogram_svg(st.hist_edges, st.hist_counts, title="activation histogram"))
        scale = abs(st.max) if st.max else None
        parts.append("<h4>Top activations</h4>" + _examples_html(sec.top, strs, scale, 16))
        if sec.tokens:
            parts.append(bars_html([(t.token, t.mean) for t in sec.tokens[:16]], title="tokens by mean activation"))
        if sec.quantiles:
            parts.append("<h4>Samples by activation band</h4>")
            for band, exs in sec.quantiles.items():
                lo, hi = band_range(band, st.hist_exp)
                parts.append(f"<div class='band'><b>({esc(f'{lo:.3g}')}, {esc(f'{hi:.3g}')}]</b>"
                             f"{_examples_html(exs, strs, scale, 4)}</div>")
    else:
        parts.append(f"<p>attention to BOS {fmt(st.bos)} · self {fmt(st.self)} · previous {fmt(st.prev)} · "
                     f"mean distance {fmt(st.dist)} · entropy {fmt(st.entropy)} nats over {st.count} queries</p>")
        parts.append("<h4>Strongest attention (row = attention from the outlined query)</h4>"
                     + _examples_html(sec.top, strs, 1.0, 16))
        if sec.pairs:
            parts.append(bars_html([(f"{p.q_token} → {p.k_token}", p.mass) for p in sec.pairs[:16]],
                                   title="query token → key token by attention mass"))
    return "".join(parts)


register_component(Component("scan", MIGRATIONS, read_unit=read_unit, render_html=render_html))
