"""The typing stage's tables: token classes, per-token activation means, and each neuron's type with evidence.

Tables
  typing_token_classes (token_id PK, n, class, tag, counts)
      how each vocabulary token is used in the corpus: n occurrences, dominant class (one of
      ``roles.pos.CLASSES``), dominant fine tag, counts = JSON list of occurrences per class in CLASSES order.
      Only tokens seen at least once. Meta ``typing_classes`` records the tagger, corpus hash, n_stories, n_tokens.
  typing_token_acts (token_id PK, n, means)
      mean activation of every neuron over the corpus positions holding the token (BOS excluded): ``means`` is
      float32 little-endian [n_layers * d_mlp], unit order layer-major (unit = layer * d_mlp + idx). Universe
      tokens only. Meta ``typing_acts`` records the corpus hash and universe size.
  typing_null_acts (token_id PK, means)
      the same means for the random-direction null units typing calibrates on (``roles.scores.NullUnits``):
      float32 [n_null_units] per universe token, written in the same transaction as typing_token_acts.
  typing_units (layer, idx PK, type, rule, confidence, score, evidence)
      the verdict for each neuron: type in syntax/content/mixed/unclear, rule ("PRON -> VERB" or ""),
      confidence in [0, 1], score (-log10 q; ranks the strongest), evidence JSON (see roles.classify).
      Meta ``typing_settings`` records the settings of the run that wrote them.
  typing_features (dictionary, idx PK, type, rule, confidence, score, evidence)
      the same verdict for each feature of a dictionary (``dictionary.typing.type_features``): ``dictionary``
      is its number (the ``layer`` slot of ``feature/<number>/<idx>``). Meta ``typing_features.<number>``
      records the settings and the dictionary's ``created`` time: rows of a dictionary replaced since
      (``--overwrite`` keeps its number) are not read.

Query API (the web and notebooks read these): ``token_classes``, ``unit_type``, ``unit_types``, ``rules``,
``type_counts``, ``store_feature_types``, ``feature_type``, ``feature_types``, ``feature_type_counts``, ``token_acts``, ``token_act_ids``. Storage and queries only: the model table over a book is
``roles.summary.book_summary`` and concept search over a book ``roles.concepts.find_concept``.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

from .core import Book, BookError, Component, register_component

MIGRATIONS = [
    """
    CREATE TABLE typing_token_classes (
        token_id INTEGER PRIMARY KEY, n INTEGER NOT NULL, class TEXT NOT NULL, tag TEXT NOT NULL,
        counts TEXT NOT NULL
    );
    CREATE TABLE typing_token_acts (token_id INTEGER PRIMARY KEY, n INTEGER NOT NULL, means BLOB NOT NULL);
    CREATE TABLE typing_units (
        layer INTEGER NOT NULL, idx INTEGER NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('syntax', 'content', 'mixed', 'unclear')),
        rule TEXT NOT NULL DEFAULT '', confidence REAL NOT NULL, score REAL NOT NULL, evidence TEXT NOT NULL,
        PRIMARY KEY (layer, idx)
    );
    CREATE INDEX typing_units_type ON typing_units (type, score);
    """,
    """
    CREATE TABLE typing_null_acts (token_id INTEGER PRIMARY KEY, means BLOB NOT NULL);
    """,
    """
    CREATE TABLE typing_features (
        dictionary INTEGER NOT NULL, idx INTEGER NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('syntax', 'content', 'mixed', 'unclear')),
        rule TEXT NOT NULL DEFAULT '', confidence REAL NOT NULL, score REAL NOT NULL, evidence TEXT NOT NULL,
        PRIMARY KEY (dictionary, idx)
    );
    CREATE INDEX typing_features_type ON typing_features (dictionary, type, score);
    """,
]


# ------------------------------------------------------------------ token classes
def store_token_classes(book: Book, tc) -> None:
    """Replace the cached token classes with ``tc`` (a roles.pos.TokenClasses)."""
    from ..roles.pos import CLASSES

    n = tc.n
    dom = tc.dominant
    rows = [(int(t), int(n[t]), CLASSES[dom[t]], tc.dominant_tag(int(t)) or "", json.dumps(tc.counts[t].tolist()))
            for t in np.flatnonzero(n)]
    with book.transaction() as c:
        c.execute("DELETE FROM typing_token_classes")
        c.executemany("INSERT INTO typing_token_classes VALUES (?, ?, ?, ?, ?)", rows)
        book.set_meta("typing_classes", {**tc.source, "tag_counts": None}, c)
        book.set_meta("typing_tag_counts", {str(k): v for k, v in tc.tag_counts.items()}, c)


def load_token_classes(book: Book, d_vocab: int, source: dict | None = None):
    """The cached TokenClasses, or None if absent or made from another corpus/tagger (``source`` keys that
    must match, e.g. {"corpus": hash, "tagger": id})."""
    from ..roles.pos import CLASSES, TokenClasses

    meta = book.get_meta("typing_classes")
    if meta is None or any(meta.get(k) != v for k, v in (source or {}).items()):
        return None
    counts = np.zeros((d_vocab, len(CLASSES)), dtype=np.int64)
    for t, cnt in book.conn.execute("SELECT token_id, counts FROM typing_token_classes"):
        if t < d_vocab:
            counts[t] = json.loads(cnt)
    tags = {int(k): v for k, v in (book.get_meta("typing_tag_counts") or {}).items()}
    return TokenClasses(counts, tags, {k: v for k, v in meta.items() if k != "tag_counts"})


def class_tokens(book: Book) -> dict[str, list[int]]:
    """{class: [token ids]} by each token's majority class (the handcraft stage resolves class rules with it);
    {} when the book has no token classes yet."""
    out: dict[str, list[int]] = {}
    for t, cls in book.conn.execute("SELECT token_id, class FROM typing_token_classes ORDER BY token_id"):
        out.setdefault(cls, []).append(int(t))
    return out


def token_classes(book: Book, token_ids=None) -> dict[int, dict]:
    """{token id: {"str", "n", "class", "tag", "profile": {class: share}}} for the given ids (default: all seen)."""
    from ..roles.pos import CLASSES

    strs = book.token_strs()
    q = "SELECT token_id, n, class, tag, counts FROM typing_token_classes"
    rows = book.conn.execute(q) if token_ids is None else (
        r for t in token_ids for r in book.conn.execute(q + " WHERE token_id = ?", (int(t),)))
    out = {}
    for t, n, cls, tag, cnt in rows:
        cnt = json.loads(cnt)
        out[t] = {"str": strs[t] if t < len(strs) else f"<{t}>", "n": n, "class": cls, "tag": tag,
                  "profile": {c: round(x / n, 4) for c, x in zip(CLASSES, cnt) if x}}
    return out


# ------------------------------------------------------------------ activation means
def store_token_acts(book: Book, ids, counts, means: np.ndarray, source: dict,
                     null_means: np.ndarray | None = None) -> None:
    """means [n_units, N] over universe ``ids`` [N] with ``counts`` [N]; ``null_means`` [n_null, N] those of
    the null units (replaced, or removed when None)."""
    m = np.ascontiguousarray(means.T.astype("<f4"))
    with book.transaction() as c:
        c.execute("DELETE FROM typing_token_acts")
        c.execute("DELETE FROM typing_null_acts")
        c.executemany("INSERT INTO typing_token_acts VALUES (?, ?, ?)",
                      ((int(t), int(n), m[i].tobytes()) for i, (t, n) in enumerate(zip(ids, counts))))
        if null_means is not None:
            z = np.ascontiguousarray(null_means.T.astype("<f4"))
            c.executemany("INSERT INTO typing_null_acts VALUES (?, ?)",
                          ((int(t), z[i].tobytes()) for i, t in enumerate(ids)))
        book.set_meta("typing_acts", source, c)


def null_acts(book: Book, ids) -> np.ndarray | None:
    """[n_null, N] the null units' activation means over universe ``ids`` [N], or None when not stored."""
    rows = dict(book.conn.execute("SELECT token_id, means FROM typing_null_acts"))
    if not rows or any(int(t) not in rows for t in ids):
        return None
    return np.stack([np.frombuffer(rows[int(t)], dtype="<f4") for t in ids], 1)


def token_acts(book: Book, token_ids=None, source: dict | None = None):
    """(ids [N], counts [N], means [n_units, N]) for the given tokens (default all stored), or None when the
    book has none (or from another corpus: ``source`` keys that must match). Tokens not stored are left out."""
    meta = book.get_meta("typing_acts")
    if meta is None or any(meta.get(k) != v for k, v in (source or {}).items()):
        return None
    q = "SELECT token_id, n, means FROM typing_token_acts"
    if token_ids is None:
        rows = list(book.conn.execute(q + " ORDER BY token_id"))
    else:
        rows = [r for t in sorted(set(int(t) for t in token_ids))
                for r in book.conn.execute(q + " WHERE token_id = ?", (t,))]
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0), None
    ids = np.array([r[0] for r in rows])
    counts = np.array([r[1] for r in rows], dtype=np.float64)
    means = np.stack([np.frombuffer(r[2], dtype="<f4") for r in rows], 1)
    return ids, counts, means


def token_act_ids(book: Book) -> list[int]:
    """The token ids with stored activation means (the typing universe), ascending; [] when none."""
    return [r[0] for r in book.conn.execute("SELECT token_id FROM typing_token_acts ORDER BY token_id")]


# ------------------------------------------------------------------ unit types
def store_types(book: Book, types, settings: dict) -> None:
    """Replace every neuron's type with ``types`` (list of roles.classify.UnitType)."""
    with book.transaction() as c:
        c.execute("DELETE FROM typing_units")
        c.executemany("INSERT INTO typing_units VALUES (?, ?, ?, ?, ?, ?, ?)",
                      ((t.layer, t.idx, t.type, t.rule, t.confidence, t.score, json.dumps(t.evidence))
                       for t in types))
        book.set_meta("typing_settings", settings, c)


def _row(r, evidence: bool = True) -> dict:
    d = {"layer": r[0], "idx": r[1], "type": r[2], "rule": r[3], "confidence": r[4], "score": r[5]}
    if evidence:
        d["evidence"] = json.loads(r[6])
    return d


def unit_type(book: Book, layer: int, idx: int) -> dict | None:
    """{"layer", "idx", "type", "rule", "confidence", "score", "evidence"} for one neuron, or None."""
    r = book.conn.execute("SELECT * FROM typing_units WHERE layer=? AND idx=?", (layer, idx)).fetchone()
    return _row(r) if r else None


def unit_types(book: Book, type: str | None = None, rule: str | None = None, limit: int | None = None,
               evidence: bool = False) -> list[dict]:
    """Typed neurons, strongest first (score desc), optionally filtered by type and/or exact rule."""
    q, args = "SELECT * FROM typing_units WHERE 1=1", []
    if type:
        q, args = q + " AND type = ?", args + [type]
    if rule:
        q, args = q + " AND rule = ?", args + [rule]
    q += " ORDER BY score DESC, layer, idx" + ("" if limit is None else f" LIMIT {int(limit)}")
    return [_row(r, evidence) for r in book.conn.execute(q, args)]


def type_counts(book: Book) -> dict[str, int]:
    """{type: number of neurons} (all four types present, zeros included)."""
    out = {t: 0 for t in ("syntax", "content", "mixed", "unclear")}
    for t, n in book.conn.execute("SELECT type, count(*) FROM typing_units GROUP BY type"):
        out[t] = n
    return out


def rules(book: Book) -> list[tuple[str, int]]:
    """(rule, number of syntax or mixed neurons with it), most common first."""
    return [(r, n) for r, n in book.conn.execute(
        "SELECT rule, count(*) AS n FROM typing_units WHERE rule != '' GROUP BY rule ORDER BY n DESC, rule")]


# ------------------------------------------------------------------ feature types
def _dictionary_created(book: Book, number: int) -> float | None:
    r = book.conn.execute("SELECT created FROM dictionaries WHERE number = ?", (number,)).fetchone()
    return None if r is None else r[0]


def store_feature_types(book: Book, number: int, types, settings: dict) -> None:
    """Replace the types of dictionary ``number``'s features with ``types`` (roles.classify.UnitType, ``idx``
    the feature index), in one transaction with the meta that ties them to this version of the dictionary."""
    created = _dictionary_created(book, number)
    if created is None:
        raise BookError(f"{book.path} has no dictionary number {number}")
    with book.transaction() as c:
        c.execute("DELETE FROM typing_features WHERE dictionary = ?", (number,))
        c.executemany("INSERT INTO typing_features VALUES (?, ?, ?, ?, ?, ?, ?)",
                      ((number, t.idx, t.type, t.rule, t.confidence, t.score, json.dumps(t.evidence))
                       for t in types))
        book.set_meta(f"typing_features.{number}", {"settings": settings, "created": created}, c)


def _features_current(book: Book, number: int) -> bool:
    meta = book.get_meta(f"typing_features.{number}")
    return meta is not None and meta.get("created") == _dictionary_created(book, number)


def feature_type(book: Book, number: int, idx: int) -> dict | None:
    """One feature's verdict ({"dictionary", "idx", "type", ...}, as :func:`unit_type`), or None."""
    if not _features_current(book, number):
        return None
    r = book.conn.execute("SELECT * FROM typing_features WHERE dictionary=? AND idx=?", (number, idx)).fetchone()
    return None if r is None else {"dictionary": r[0], **{k: v for k, v in _row(r).items() if k != "layer"}}


def feature_types(book: Book, number: int, type: str | None = None, limit: int | None = None,
                  evidence: bool = False) -> list[dict]:
    """Typed features of dictionary ``number``, strongest first, optionally of one type ([] when not typed)."""
    if not _features_current(book, number):
        return []
    q, args = "SELECT * FROM typing_features WHERE dictionary = ?", [number]
    if type:
        q, args = q + " AND type = ?", args + [type]
    q += " ORDER BY score DESC, idx" + ("" if limit is None else f" LIMIT {int(limit)}")
    return [{"dictionary": r[0], **{k: v for k, v in _row(r, evidence).items() if k != "layer"}}
            for r in book.conn.execute(q, args)]


def feature_type_counts(book: Book, number: int) -> dict[str, int]:
    """{type: number of features} of dictionary ``number`` (zeros included; dead features count as unclear)."""
    out = {t: 0 for t in ("syntax", "content", "mixed", "unclear")}
    if _features_current(book, number):
        for t, n in book.conn.execute("SELECT type, count(*) FROM typing_features WHERE dictionary = ? "
                                      "GROUP BY type", (number,)):
            out[t] = n
    return out


# ------------------------------------------------------------------ unit sections
def read_unit(book: Book, kind: str, layer: int, idx: int) -> dict | None:
    if kind not in ("neuron", "feature"):
        return None
    try:
        return unit_type(book, layer, idx) if kind == "neuron" else feature_type(book, layer, idx)
    except Exception:  # a book made before this component existed has no table yet when opened readonly
        return None


def _toks(toks) -> str:
    e = html.escape
    return " ".join(f"<code title='{e(str(t[3]))} {t[2]}'>{e(repr(t[1]) if t[1] is not None else str(t[0]))}</code>"
                    for t in toks)


def _classes(cls) -> str:
    e = html.escape
    return ", ".join(f"{'<b>' if c['significant'] else ''}{e(c['class'])}{'</b>' if c['significant'] else ''} "
                     f"{c['k']}/{c['K']} (LOR {c['log_odds']:.2f}, q {c['q']:.2g})" for c in cls)


def render_html(sec: dict, ctx: Any = None) -> str:
    e = html.escape
    ev = sec["evidence"]
    if ev.get("dead"):
        return "<p><b>unclear</b>: a dead feature (it never fired in the scan), left out of typing</p>"
    con = ev["content"]
    coh = con.get("coherence") or {}
    parts = [f"<p><b>{e(sec['type'])}</b>{' ' + e(sec['rule']) if sec['rule'] else ''} "
             f"(confidence {sec['confidence']:.3f})</p>",
             f"<p>reads ({e(ev['input']['source'])}): {_toks(ev['input']['tokens'])}<br>"
             f"classes: {_classes(ev['input']['classes'])}</p>",
             f"<p>promotes: {_toks(ev['output']['tokens'])}<br>classes (shared tokens left out): "
             f"{_classes(ev['output']['classes'])}</p>",
             f"<p>content: {len(con['overlap'])} shared tokens (p {con['p_overlap']:.2g}), in/out embedding "
             f"similarity z {coh.get('z') if coh.get('z') is not None else '-'}; q {con['q']:.2g}</p>"]
    return "".join(parts)


register_component(Component("typing", MIGRATIONS, read_unit=read_unit, render_html=render_html))
