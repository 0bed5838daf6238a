"""The circuits stage's tables in the book, how the stage writes them, and the query API readers use.

Tables (all written by :func:`circuitbook.circuits.run_circuits`; token ids index ``vocab``):

    circuit_effects(analysis, layer, idx, via, top_ids, top_vals, bottom_ids, bottom_vals, norm)
        one neuron's token effect along one path. analysis: 'neuron_out' (logits it promotes/suppresses) or
        'neuron_in' (tokens that drive it); via: '' for the direct path, 'L{l}H{h}' through that head.
        *_ids: int32 blobs [k], *_vals: float32 blobs [k]; top largest first, bottom smallest first.
    circuit_rows(circuit, n_rows, k, ids, vals)
        per-row top-k of a token x token circuit, row-major int32 / float32 blobs [n_rows, k], best first.
        circuit: 'bigram' (current -> next token log-probs), 'ov:L0H3' (source -> output logits),
        'qk:L0H3' (query -> key scores), 'ov:L0H1>L1H2' (virtual head).
    circuit_pairs(circuit, sign, rank, row_tok, col_tok, value)
        the circuit's global top (sign +1) / bottom (sign -1) entries, rank 0 = strongest.
    circuit_head_scores(layer, head, name, value)
        per-head scalars: ov_copying, ov_positive_share, qk_same_token, qk_positive_share, positional_share,
        preferred_offset, previous_token, duplicate_token, induction.
    circuit_profiles(layer, head, name, vals)       'positional_qk': float32 blob [max_offset + 1]
    circuit_trigrams(layer, head, rank, key_tok, query_tok, out_tok, qk, ov, score)
    circuit_composition(mode, l1, h1, l2, h2, score)  mode 'Q' | 'K' | 'V', writer (l1, h1) before reader (l2, h2)
    circuit_virtual(l1, h1, l2, h2, v_score, copying, positive_share)
    circuit_summary(name, value JSON)   'settings', 'scales', 'direct_path_loss', 'notes', 'detectors'
    circuit_done(task, at)              finished tasks, so an interrupted run resumes where it stopped

Every query function takes the :class:`~circuitbook.book.core.Book` first and returns plain dataclasses /
lists (token strings included), or None when the book has nothing for that unit. Readers whose analysis has
a same-named computing function in :mod:`circuitbook.circuits` carry a ``stored_`` prefix
(``stored_neuron_output_effect(book, ...)`` reads what ``neuron_output_effect(basis, ...)`` computes; likewise
``stored_neuron_input_effect``, ``stored_skip_trigrams``, ``stored_detector_scores``, ``stored_composition``).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from typing import Any, Iterable

import numpy as np

from .core import Book, BookError, Component, finite, register_component
from .render import Ctx, bars_html, esc, fmt, pairs_html, value_html

MIGRATIONS = [
    """
    CREATE TABLE circuit_effects (
        analysis TEXT NOT NULL CHECK (analysis IN ('neuron_out', 'neuron_in')),
        layer INTEGER NOT NULL, idx INTEGER NOT NULL, via TEXT NOT NULL DEFAULT '',
        top_ids BLOB NOT NULL, top_vals BLOB NOT NULL, bottom_ids BLOB NOT NULL, bottom_vals BLOB NOT NULL,
        norm REAL NOT NULL,
        PRIMARY KEY (analysis, layer, idx, via)
    );
    CREATE TABLE circuit_rows (
        circuit TEXT PRIMARY KEY, n_rows INTEGER NOT NULL, k INTEGER NOT NULL, ids BLOB NOT NULL, vals BLOB NOT NULL
    );
    CREATE TABLE circuit_pairs (
        circuit TEXT NOT NULL, sign INTEGER NOT NULL, rank INTEGER NOT NULL,
        row_tok INTEGER NOT NULL, col_tok INTEGER NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (circuit, sign, rank)
    );
    CREATE TABLE circuit_head_scores (
        layer INTEGER NOT NULL, head INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
        PRIMARY KEY (layer, head, name)
    );
    CREATE TABLE circuit_profiles (
        layer INTEGER NOT NULL, head INTEGER NOT NULL, name TEXT NOT NULL, vals BLOB NOT NULL,
        PRIMARY KEY (layer, head, name)
    );
    CREATE TABLE circuit_trigrams (
        layer INTEGER NOT NULL, head INTEGER NOT NULL, rank INTEGER NOT NULL,
        key_tok INTEGER NOT NULL, query_tok INTEGER NOT NULL, out_tok INTEGER NOT NULL,
        qk REAL NOT NULL, ov REAL NOT NULL, score REAL NOT NULL,
        PRIMARY KEY (layer, head, rank)
    );
    CREATE TABLE circuit_composition (
        mode TEXT NOT NULL CHECK (mode IN ('Q', 'K', 'V')),
        l1 INTEGER NOT NULL, h1 INTEGER NOT NULL, l2 INTEGER NOT NULL, h2 INTEGER NOT NULL, score REAL NOT NULL,
        PRIMARY KEY (mode, l1, h1, l2, h2)
    );
    CREATE TABLE circuit_virtual (
        l1 INTEGER NOT NULL, h1 INTEGER NOT NULL, l2 INTEGER NOT NULL, h2 INTEGER NOT NULL,
        v_score REAL, copying REAL, positive_share REAL,
        PRIMARY KEY (l1, h1, l2, h2)
    );
    CREATE TABLE circuit_summary (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE circuit_done (task TEXT PRIMARY KEY, at REAL NOT NULL);
    """,
]

TABLES = ("circuit_effects", "circuit_rows", "circuit_pairs", "circuit_head_scores", "circuit_profiles",
          "circuit_trigrams", "circuit_composition", "circuit_virtual", "circuit_summary", "circuit_done")
HEAD_SCORES = ("ov_copying", "ov_positive_share", "qk_same_token", "qk_positive_share", "positional_share",
               "preferred_offset", "previous_token", "duplicate_token", "induction")


def head_key(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _via_key(via) -> str:
    if via is None or via == "":
        return ""
    if isinstance(via, str):
        return via
    return head_key(*via)


def _ids(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a), dtype=np.int32).tobytes()


def _vals(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32)).tobytes()


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


# ====================================================================== writers (used by circuits.run)
def clear(book: Book) -> None:
    """Delete every circuits result (e.g. before recomputing with other settings)."""
    with book.transaction() as c:
        for t in TABLES:
            c.execute(f"DELETE FROM {t}")


def done_tasks(book: Book) -> set[str]:
    return {r[0] for r in book.conn.execute("SELECT task FROM circuit_done")}


def mark_done(conn: sqlite3.Connection, task: str) -> None:
    conn.execute("INSERT OR REPLACE INTO circuit_done VALUES (?, ?)", (task, time.time()))


def set_summary(conn: sqlite3.Connection, name: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO circuit_summary VALUES (?, ?)", (name, json.dumps(finite(value))))


def store_effects(conn: sqlite3.Connection, analysis: str, layer: int, via, top_ids, top_vals, bottom_ids,
                  bottom_vals, norms) -> None:
    """One layer's effects along one path: arrays [d_mlp, k] (row = neuron) and norms [d_mlp]."""
    ti, tv, bi, bv, nr = map(_np, (top_ids, top_vals, bottom_ids, bottom_vals, norms))
    v = _via_key(via)
    conn.executemany(
        "INSERT OR REPLACE INTO circuit_effects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((analysis, layer, n, v, _ids(ti[n]), _vals(tv[n]), _ids(bi[n]), _vals(bv[n]), float(nr[n]))
         for n in range(len(nr))))


def store_rows(conn: sqlite3.Connection, circuit: str, ids, vals) -> None:
    ids, vals = _np(ids), _np(vals)
    conn.execute("INSERT OR REPLACE INTO circuit_rows VALUES (?, ?, ?, ?, ?)",
                 (circuit, ids.shape[0], ids.shape[1], _ids(ids), _vals(vals)))


def store_pairs(conn: sqlite3.Connection, circuit: str, sign: int, rows, cols, vals) -> None:
    conn.execute("DELETE FROM circuit_pairs WHERE circuit = ? AND sign = ?", (circuit, sign))
    conn.executemany("INSERT INTO circuit_pairs VALUES (?, ?, ?, ?, ?, ?)",
                     ((circuit, sign, i, int(r), int(c), float(v))
                      for i, (r, c, v) in enumerate(zip(_np(rows), _np(cols), _np(vals)))))


def store_head_scores(conn: sqlite3.Connection, layer: int, head: int, scores: dict[str, float | None]) -> None:
    conn.executemany("INSERT OR REPLACE INTO circuit_head_scores VALUES (?, ?, ?, ?)",
                     ((layer, head, k, None if v is None else float(v)) for k, v in scores.items()))


def store_profile(conn: sqlite3.Connection, layer: int, head: int, name: str, vals) -> None:
    conn.execute("INSERT OR REPLACE INTO circuit_profiles VALUES (?, ?, ?, ?)", (layer, head, name, _vals(_np(vals))))


def store_trigrams(conn: sqlite3.Connection, layer: int, head: int, key, query, out, qk, ov, score) -> None:
    conn.execute("DELETE FROM circuit_trigrams WHERE layer = ? AND head = ?", (layer, head))
    conn.executemany("INSERT INTO circuit_trigrams VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     ((layer, head, i, int(a), int(b), int(c), float(d), float(e), float(f))
                      for i, (a, b, c, d, e, f) in enumerate(zip(*map(_np, (key, query, out, qk, ov, score))))))


def store_composition(conn: sqlite3.Connection, mode: str, scores) -> None:
    """scores [L, H, L, H]; only pairs with l1 < l2 are stored."""
    s = _np(scores)
    L, H = s.shape[:2]
    conn.executemany("INSERT OR REPLACE INTO circuit_composition VALUES (?, ?, ?, ?, ?, ?)",
                     ((mode, l1, h1, l2, h2, float(s[l1, h1, l2, h2]))
                      for l1 in range(L) for l2 in range(l1 + 1, L) for h1 in range(H) for h2 in range(H)))


def store_virtual(conn: sqlite3.Connection, l1: int, h1: int, l2: int, h2: int, v_score: float, copying: float,
                  positive_share: float) -> None:
    conn.execute("INSERT OR REPLACE INTO circuit_virtual VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (l1, h1, l2, h2, float(v_score), float(copying), float(positive_share)))


# ====================================================================== query API
@dataclasses.dataclass
class TokenList:
    """Tokens with values, best first: ids [n], values [n], strs [n] (token strings from the book's vocab)."""

    ids: list[int]
    values: list[float]
    strs: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def as_list(self) -> list[tuple[int, str, float]]:
        return list(zip(self.ids, self.strs, self.values))


@dataclasses.dataclass
class NeuronEffect:
    """A neuron's token effect along one path (via '' = direct, 'L1H3' = through that head).

    For 'neuron_out': ``top`` = promoted tokens (logit per unit activation), ``bottom`` = suppressed.
    For 'neuron_in': ``top`` = tokens that drive the neuron most, ``bottom`` = those that push it down.
    norm: L2 norm of the full [d_vocab] effect vector (compare paths with it)."""

    analysis: str
    layer: int
    idx: int
    via: str
    top: TokenList
    bottom: TokenList
    norm: float


@dataclasses.dataclass
class Pair:
    """One entry of a token x token circuit: (row token, column token, value) with strings.
    OV: row = source, col = output; QK: row = query, col = key; bigram: row = current, col = next."""

    row: int
    col: int
    value: float
    row_str: str
    col_str: str


@dataclasses.dataclass
class Trigram:
    """A skip-trigram 'key ... query -> out' of one head: ids, strings, QK score, OV value, combined score."""

    key: int
    query: int
    out: int
    key_str: str
    query_str: str
    out_str: str
    qk: float
    ov: float
    score: float


def _strs(book: Book, ids: Iterable[int]) -> list[str]:
    vs = book.token_strs()
    return [vs[i] if 0 <= i < len(vs) else f"<{i}>" for i in ids]


def _tokens(book: Book, ids_blob: bytes, vals_blob: bytes, k: int | None) -> TokenList:
    ids = np.frombuffer(ids_blob, dtype=np.int32)[:k].tolist()
    vals = np.frombuffer(vals_blob, dtype=np.float32)[:k].tolist()
    return TokenList(ids, vals, _strs(book, ids))


def _effect(book: Book, analysis: str, layer: int, idx: int, via, k: int | None) -> NeuronEffect | None:
    v = _via_key(via)
    r = book.conn.execute("SELECT top_ids, top_vals, bottom_ids, bottom_vals, norm FROM circuit_effects "
                          "WHERE analysis=? AND layer=? AND idx=? AND via=?", (analysis, layer, idx, v)).fetchone()
    if r is None:
        return None
    return NeuronEffect(analysis, layer, idx, v, _tokens(book, r[0], r[1], k), _tokens(book, r[2], r[3], k), r[4])


def stored_neuron_output_effect(book: Book, layer: int, idx: int, via=None, k: int | None = None) -> NeuronEffect | None:
    """Tokens neuron (layer, idx) promotes (``top``) and suppresses (``bottom``) in the logits.

    via: None for the direct path, (l2, h) or 'L{l2}H{h}' for the path through a later head's OV circuit."""
    return _effect(book, "neuron_out", layer, idx, via, k)


def stored_neuron_input_effect(book: Book, layer: int, idx: int, via=None, k: int | None = None) -> NeuronEffect | None:
    """Tokens that drive neuron (layer, idx) (``top``) or push it down (``bottom``).

    via: None straight from the embedding; (l2, h) or 'L{l2}H{h}' when head h attends to the token."""
    return _effect(book, "neuron_in", layer, idx, via, k)


def neuron_paths(book: Book, analysis: str, layer: int, idx: int) -> list[tuple[str, float]]:
    """(via, norm) of every stored path of a neuron for 'neuron_out' / 'neuron_in', strongest first."""
    return [(r[0], r[1]) for r in book.conn.execute(
        "SELECT via, norm FROM circuit_effects WHERE analysis=? AND layer=? AND idx=? ORDER BY norm DESC",
        (analysis, layer, idx))]


def _row(book: Book, circuit: str, row: int, k: int | None) -> TokenList | None:
    r = book.conn.execute("SELECT n_rows, k FROM circuit_rows WHERE circuit=?", (circuit,)).fetchone()
    if r is None:
        return None
    n_rows, kk = r
    if not 0 <= row < n_rows:
        raise BookError(f"token id {row} out of range for {circuit} (vocabulary of {n_rows})")
    # read one row's bytes straight out of the blob (the blob is [n_rows, k] row-major, 4 bytes per entry)
    b = book.conn.execute("SELECT substr(ids, ?, ?), substr(vals, ?, ?) FROM circuit_rows WHERE circuit=?",
                          (1 + 4 * kk * row, 4 * kk, 1 + 4 * kk * row, 4 * kk, circuit)).fetchone()
    return _tokens(book, b[0], b[1], k)


def _pairs(book: Book, circuit: str, sign: int, n: int | None) -> list[Pair] | None:
    rows = book.conn.execute("SELECT row_tok, col_tok, value FROM circuit_pairs WHERE circuit=? AND sign=? "
                             "ORDER BY rank LIMIT ?", (circuit, sign, -1 if n is None else n)).fetchall()
    if not rows:
        return None
    rs, cs = _strs(book, [r[0] for r in rows]), _strs(book, [r[1] for r in rows])
    return [Pair(r[0], r[1], r[2], a, b) for r, a, b in zip(rows, rs, cs)]


def head_ov_top(book: Book, layer: int, head: int, source: int | None = None, k: int | None = None,
                bottom: bool = False):
    """OV circuit of head (layer, head).

    source=None: the top (or with ``bottom`` the most negative) (source, output) pairs over the whole
    vocabulary, as a list of :class:`Pair`; source=t: the outputs token t promotes most, as a TokenList."""
    c = f"ov:{head_key(layer, head)}"
    return _pairs(book, c, -1 if bottom else 1, k) if source is None else _row(book, c, source, k)


def head_qk_top(book: Book, layer: int, head: int, query: int | None = None, k: int | None = None):
    """QK circuit of head (layer, head): top (query, key) pairs (list of Pair), or for ``query`` its
    preferred keys (TokenList). Values are attention scores relative to the average key."""
    c = f"qk:{head_key(layer, head)}"
    return _pairs(book, c, 1, k) if query is None else _row(book, c, query, k)


def virtual_head_top(book: Book, l1: int, h1: int, l2: int, h2: int, source: int | None = None,
                     k: int | None = None, bottom: bool = False):
    """OV circuit of the virtual head (l1, h1) -> (l2, h2), like :func:`head_ov_top`."""
    c = f"ov:{head_key(l1, h1)}>{head_key(l2, h2)}"
    return _pairs(book, c, -1 if bottom else 1, k) if source is None else _row(book, c, source, k)


def bigram_top(book: Book, token: int | None = None, k: int | None = None):
    """Direct-path bigram table: for ``token`` its likeliest next tokens (TokenList of log-probs); with
    token=None the likeliest (current, next) pairs overall (list of Pair)."""
    return _pairs(book, "bigram", 1, k) if token is None else _row(book, "bigram", token, k)


def head_scores(book: Book, layer: int | None = None, head: int | None = None) -> dict[tuple[int, int], dict]:
    """{(layer, head): {score name: value}} for every stored head (or the one asked for). Names: see HEAD_SCORES."""
    q, args = "SELECT layer, head, name, value FROM circuit_head_scores WHERE 1", []
    if layer is not None:
        q, args = q + " AND layer = ?", args + [layer]
    if head is not None:
        q, args = q + " AND head = ?", args + [head]
    out: dict[tuple[int, int], dict] = {}
    for l, h, n, v in book.conn.execute(q + " ORDER BY layer, head", args):
        out.setdefault((l, h), {})[n] = v
    return out


def stored_detector_scores(book: Book, name: str | None = None):
    """Detector scores: with ``name`` ('previous_token' | 'duplicate_token' | 'induction') a nested list
    [n_layers][n_heads]; without, {name: that list}. None if the detectors have not run."""
    names = ("previous_token", "duplicate_token", "induction") if name is None else (name,)
    cfg = book.config
    if cfg is None:
        return None
    out = {}
    for n in names:
        m = [[None] * cfg["n_heads"] for _ in range(cfg["n_layers"])]
        rows = book.conn.execute("SELECT layer, head, value FROM circuit_head_scores WHERE name = ?", (n,)).fetchall()
        if not rows:
            return None
        for l, h, v in rows:
            m[l][h] = v
        out[n] = m
    return out[name] if name is not None else out


def positional_profile(book: Book, layer: int, head: int) -> list[float] | None:
    """Mean positional QK score at key offset 0, 1, 2... (query - key) for one head; None for rotary models."""
    r = book.conn.execute("SELECT vals FROM circuit_profiles WHERE layer=? AND head=? AND name='positional_qk'",
                          (layer, head)).fetchone()
    return None if r is None else np.frombuffer(r[0], dtype=np.float32).tolist()


def stored_skip_trigrams(book: Book, layer: int, head: int, n: int | None = None) -> list[Trigram]:
    """The head's top skip-trigrams 'key ... query -> out', best first."""
    rows = book.conn.execute("SELECT key_tok, query_tok, out_tok, qk, ov, score FROM circuit_trigrams "
                             "WHERE layer=? AND head=? ORDER BY rank LIMIT ?",
                             (layer, head, -1 if n is None else n)).fetchall()
    vs = book.token_strs()
    s = lambda i: vs[i] if i < len(vs) else f"<{i}>"  # noqa: E731
    return [Trigram(a, b, c, s(a), s(b), s(c), d, e, f) for a, b, c, d, e, f in rows]


def stored_composition(book: Book, mode: str) -> np.ndarray | None:
    """Composition scores for mode 'Q' | 'K' | 'V' as an array [n_layers, n_heads, n_layers, n_heads]:
    ``x[l1, h1, l2, h2]`` = how much reader (l2, h2) composes with writer (l1, h1); 0 unless l1 < l2."""
    mode = mode.upper()
    if mode not in ("Q", "K", "V"):
        raise BookError(f"composition mode must be 'Q', 'K' or 'V', not {mode!r}")
    cfg = book.config
    rows = book.conn.execute("SELECT l1, h1, l2, h2, score FROM circuit_composition WHERE mode=?", (mode,)).fetchall()
    if cfg is None or not rows:
        return None
    out = np.zeros((cfg["n_layers"], cfg["n_heads"], cfg["n_layers"], cfg["n_heads"]))
    for l1, h1, l2, h2, s in rows:
        out[l1, h1, l2, h2] = s
    return out


def top_compositions(book: Book, mode: str, n: int = 10) -> list[tuple[int, int, int, int, float]]:
    """The n strongest (l1, h1, l2, h2, score) pairs for one mode."""
    return [tuple(r) for r in book.conn.execute(
        "SELECT l1, h1, l2, h2, score FROM circuit_composition WHERE mode=? ORDER BY score DESC LIMIT ?",
        (mode.upper(), n))]


def virtual_heads(book: Book) -> list[dict]:
    """Stored virtual heads: dicts with l1, h1, l2, h2, v_score, copying, positive_share (strongest first)."""
    return [dict(r) for r in book.conn.execute("SELECT * FROM circuit_virtual ORDER BY v_score DESC")]


def summary(book: Book, name: str | None = None) -> Any:
    """Run-level results: 'settings', 'scales', 'direct_path_loss' ({direct, full, uniform, n_tokens,
    explained}), 'notes' (list of str). With no name: a dict of all of them."""
    if name is not None:
        r = book.conn.execute("SELECT value FROM circuit_summary WHERE name=?", (name,)).fetchone()
        return None if r is None else json.loads(r[0])
    return {r[0]: json.loads(r[1]) for r in book.conn.execute("SELECT name, value FROM circuit_summary")}


# ====================================================================== unit sections
def read_unit(book: Book, kind: str, layer: int, idx: int) -> dict | None:
    """The circuits section of a unit page: compact, top 10 of everything."""
    if kind == "neuron":
        out = {}
        for analysis, key in (("neuron_out", "output"), ("neuron_in", "input")):
            e = _effect(book, analysis, layer, idx, None, 10)
            if e is not None:
                out[key] = {"top": e.top.as_list(), "bottom": e.bottom.as_list(), "norm": e.norm}
            paths = [p for p in neuron_paths(book, analysis, layer, idx) if p[0]][:3]
            if paths:
                out[key + "_paths"] = [{"via": v, "norm": nrm, "top": _effect(book, analysis, layer, idx, v, 5)
                                        .top.as_list()} for v, nrm in paths]
        return out or None
    scores = head_scores(book, layer, idx).get((layer, idx))
    if scores is None:
        return None
    out = {"scores": scores}
    for key, pairs in (("ov_top", head_ov_top(book, layer, idx, k=10)), ("qk_top", head_qk_top(book, layer, idx, k=10))):
        if pairs:
            out[key] = [(p.row_str, p.col_str, p.value) for p in pairs]
    tri = stored_skip_trigrams(book, layer, idx, 10)
    if tri:
        out["skip_trigrams"] = [(t.key_str, t.query_str, t.out_str, t.score) for t in tri]
    prof = positional_profile(book, layer, idx)
    if prof is not None:
        out["positional_profile"] = prof[:9]
    comp = book.conn.execute(
        "SELECT mode, l1, h1, l2, h2, score FROM circuit_composition WHERE (l1=? AND h1=?) OR (l2=? AND h2=?) "
        "ORDER BY score DESC LIMIT 5", (layer, idx, layer, idx)).fetchall()
    if comp:
        out["composition"] = [tuple(r) for r in comp]
    return out


def render_html(sec: dict, ctx: Ctx | None = None) -> str:
    """The circuits stage's section (see ``book/circuits.py`` ``read_unit``): token effects for neurons;
    scores, OV/QK tops, skip-trigrams, positional profile and composition for heads. The one renderer of
    this section: web pages, the static export and notebooks all show it. Every string goes through esc."""
    ctx = ctx or Ctx()
    parts = []
    for key, title in (("output", "Output effects: logits promoted / suppressed per unit of activation"),
                       ("input", "Input effects: tokens that drive it / push it down")):
        if key in sec:
            s = sec[key]
            parts.append(f"<div class='cb-effects' id='effects-{key}'><h3>{esc(title)} "
                         f"<small>(norm {fmt(s.get('norm'))})</small></h3>"
                         + bars_html([(t, v) for _, t, v in s.get("top", [])], "top")
                         + bars_html([(t, v) for _, t, v in s.get("bottom", [])], "bottom") + "</div>")
        for p in sec.get(key + "_paths", []):
            parts.append(bars_html([(t, v) for _, t, v in p.get("top", [])],
                                   f"{key} via {p.get('via')} (norm {p.get('norm', 0):.3g})"))
    if "scores" in sec:
        rows = "".join(f"<tr><th>{esc(k)}</th><td class='num'>{fmt(v)}</td></tr>"
                       for k, v in sec["scores"].items() if v is not None)
        parts.append(f"<h3>Head scores</h3><table class='cb-kv' id='head-scores'>{rows}</table>")
    if sec.get("ov_top") or sec.get("qk_top"):
        parts.append("<p class='hint'>Token circuits: OV source token &rarr; output logit (what the head writes "
                     "when it attends to a token), QK query &rarr; key (where it attends).</p>")
    if sec.get("ov_top"):
        parts.append("<div class='cb-side'>" + pairs_html(sec["ov_top"], ("source", "output", "value"),
                                                          "OV circuit: source token -> output logit"))
    if sec.get("qk_top"):
        parts.append(pairs_html(sec["qk_top"], ("query", "key", "score"), "QK circuit: query -> key"))
    if sec.get("ov_top"):
        parts.append("</div>")
    if sec.get("skip_trigrams"):
        parts.append(pairs_html(sec["skip_trigrams"], ("key", "... query", "-> out", "score"),
                                "Skip-trigrams: key ... query -> out"))
    if sec.get("positional_profile"):
        parts.append(bars_html([(f"offset {i}", v) for i, v in enumerate(sec["positional_profile"])],
                               "Positional QK score by offset (query - key)"))
    if sec.get("composition"):
        rows = []
        for m, l1, h1, l2, h2, score in sec["composition"]:
            rows.append(f"<tr><td>{esc(m)}</td><td>{ctx.unit_link('head', l1, h1)} &rarr; "
                        f"{ctx.unit_link('head', l2, h2)}</td><td class='num'>{fmt(score)}</td></tr>")
        parts.append("<table class='cb-table' id='composition'><caption>Composition with other heads "
                     "(writer &rarr; reader)</caption><tr><th>mode</th><th>heads</th><th>score</th></tr>"
                     + "".join(rows) + "</table>")
    known = {"output", "input", "output_paths", "input_paths", "scores", "ov_top", "qk_top", "skip_trigrams",
             "positional_profile", "composition"}
    rest = {k: v for k, v in sec.items() if k not in known}
    if rest:
        parts.append(value_html(rest, ctx))
    return "".join(parts)


register_component(Component("circuits", MIGRATIONS, read_unit=read_unit, render_html=render_html))
