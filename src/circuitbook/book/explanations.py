"""The explain stage's tables: structured explanations (append-only), their scores, and scorecard runs.

Tables (component "explain", version 1):

    explanations       (id, kind, layer, idx, author, sentence, program, provenance, at)
        one row per proposed or written explanation, never updated or deleted: a unit's history is its
        rows in id order. ``author`` is "auto" (the offline explainer), "llm:<model>" or a person's name;
        ``program`` the JSON program of ``explain/program.py`` (NULL for free text that did not parse);
        ``provenance`` JSON: what it was made from (stage settings, scan identity, evidence used).
    explanation_scores (id, explanation_id, run_id, simulation, detection, ablation, carry, n_windows, at)
        one row per (explanation, score run): simulation = Pearson correlation of simulated and true
        activations over top + random held-out windows; detection = balanced accuracy; ablation = share of
        the mean-ablation loss increase recovered by the simulation; carry = that loss increase (nats/token).
    scorecards         (id, at, corpus, settings, ce_original, ce_ablated, ce_explained, recovered,
                        n_explained, n_units, groups, curve)
        one row per scorecard run: the whole MLP with explained units simulated and the rest mean-ablated.
    score_journal      (key, explanation_id, row)   (migration 2)
        the scores an unfinished ``score`` run has finished, so a killed run resumes: ``key`` names the run
        (a digest of what it scores, on which stories, with which settings), ``row`` the JSON score row.
        Emptied in the transaction that stores the run (:func:`store_score_run`); a run with another key
        clears what an older one left.

Which explanation counts (:func:`current`): a person's (any author other than "auto" / "llm:...") beats
an LLM's, which beats "auto"; within a rank the newest wins.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from .core import Book, BookError, Component, finite, register_component

MIGRATIONS = [
    """
    CREATE TABLE explanations (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL,
        author TEXT NOT NULL, sentence TEXT NOT NULL, program TEXT, provenance TEXT NOT NULL DEFAULT '{}',
        at REAL NOT NULL
    );
    CREATE INDEX explanations_unit ON explanations (kind, layer, idx, id);
    CREATE TABLE explanation_scores (
        id INTEGER PRIMARY KEY AUTOINCREMENT, explanation_id INTEGER NOT NULL REFERENCES explanations (id),
        run_id INTEGER, simulation REAL, detection REAL, ablation REAL, carry REAL, n_windows INTEGER,
        at REAL NOT NULL
    );
    CREATE INDEX explanation_scores_expl ON explanation_scores (explanation_id, id);
    CREATE TABLE scorecards (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, corpus TEXT, settings TEXT NOT NULL,
        ce_original REAL, ce_ablated REAL, ce_explained REAL, recovered REAL, n_explained INTEGER,
        n_units INTEGER, groups TEXT NOT NULL, curve TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE score_journal (
        key TEXT NOT NULL, explanation_id INTEGER NOT NULL, row TEXT NOT NULL, PRIMARY KEY (key, explanation_id)
    );
    """,
]


def author_rank(author: str) -> int:
    """0 auto, 1 llm:<model>, 2 a person: the higher rank wins (see :func:`current`)."""
    return 0 if author == "auto" else 1 if author.startswith("llm:") else 2


def _check_author(author: str) -> None:
    if not isinstance(author, str) or not author.strip():
        raise BookError("an explanation needs an author: 'auto', 'llm:<model>' or a person's name")


def add_explanations(book: Book, rows: Iterable[tuple], at: float | None = None) -> list[int]:
    """Append explanations: rows of (kind, layer, idx, author, sentence, program dict | None, provenance dict).
    One transaction; returns the new ids."""
    at = time.time() if at is None else at
    ids = []
    with book.transaction() as c:
        for kind, layer, idx, author, sentence, program, prov in rows:
            _check_author(author)
            cur = c.execute("INSERT INTO explanations (kind, layer, idx, author, sentence, program, provenance, at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (kind, int(layer), int(idx), author, sentence,
                             None if program is None else json.dumps(finite(program)), json.dumps(finite(prov or {})), at))
            ids.append(cur.lastrowid)
    return ids


def add_explanation(book: Book, kind: str, layer: int, idx: int, author: str, sentence: str,
                    program: dict | None = None, provenance: dict | None = None) -> int:
    """Append one explanation (checked against the book's units) and return its id."""
    book._check_unit(kind, layer, idx)
    return add_explanations(book, [(kind, layer, idx, author, sentence, program, provenance)])[0]


def _row(r) -> dict:
    d = dict(r)
    d["program"] = json.loads(d["program"]) if d.get("program") else None
    d["provenance"] = json.loads(d["provenance"]) if d.get("provenance") else {}
    return d


def history(book: Book, kind: str, layer: int, idx: int) -> list[dict]:
    """Every explanation of one unit, oldest first."""
    return [_row(r) for r in book.conn.execute(
        "SELECT * FROM explanations WHERE kind=? AND layer=? AND idx=? ORDER BY id", (kind, layer, idx))]


def current(book: Book, kind: str | None = None) -> dict[tuple[str, int, int], dict]:
    """{(kind, layer, idx): the explanation that counts} (person > llm > auto, newest within a rank)."""
    q = "SELECT * FROM explanations" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
    best: dict[tuple[str, int, int], dict] = {}
    for r in book.conn.execute(q, (kind,) if kind else ()):
        key = (r["kind"], r["layer"], r["idx"])
        have = best.get(key)
        if have is None or author_rank(r["author"]) >= author_rank(have["author"]):
            best[key] = _row(r)
    return best


def count(book: Book) -> int:
    return book.conn.execute("SELECT count(*) FROM explanations").fetchone()[0]


def save_scores(book: Book, run_id: int | None, rows: Iterable[dict]) -> None:
    """rows: {explanation_id, simulation, detection, ablation, carry, n_windows} (None where not scored)."""
    with book.transaction() as c:
        _insert_scores(c, run_id, rows)


def _insert_scores(c, run_id: int | None, rows: Iterable[dict]) -> None:
    at = time.time()
    c.executemany("INSERT INTO explanation_scores (explanation_id, run_id, simulation, detection, ablation, carry, "
                  "n_windows, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  [(r["explanation_id"], run_id, *finite([r.get("simulation"), r.get("detection"), r.get("ablation"),
                    r.get("carry")]), r.get("n_windows"), at) for r in rows])


def journal_scores(book: Book, key: str) -> dict[int, dict]:
    """{explanation id: score row} that an unfinished score run named ``key`` has finished."""
    return {r["explanation_id"]: json.loads(r["row"]) for r in book.conn.execute(
        "SELECT explanation_id, row FROM score_journal WHERE key = ?", (key,))}


def journal_add(book: Book, key: str, rows: list[dict]) -> None:
    """Record finished score rows of the run ``key`` (one transaction; drops what other runs left)."""
    with book.transaction() as c:
        c.execute("DELETE FROM score_journal WHERE key != ?", (key,))
        c.executemany("INSERT OR REPLACE INTO score_journal (key, explanation_id, row) VALUES (?, ?, ?)",
                      [(key, int(r["explanation_id"]), json.dumps(finite(r))) for r in rows])


def store_score_run(book: Book, settings: dict, rows: list[dict], summary: dict, key: str | None = None) -> int:
    """One transaction: a finished ``score`` run with its scores (:func:`save_scores`' rows), and the journal
    of ``key`` emptied. Returns the run id."""
    with book.transaction() as c:
        run_id = book.start_run("score", settings)
        _insert_scores(c, run_id, rows)
        book.finish_run(run_id, summary)
        if key is not None:
            c.execute("DELETE FROM score_journal WHERE key = ?", (key,))
    return run_id


def latest_scores(book: Book) -> dict[int, dict]:
    """{explanation id: its newest score row}."""
    out: dict[int, dict] = {}
    for r in book.conn.execute("SELECT * FROM explanation_scores ORDER BY id"):
        out[r["explanation_id"]] = dict(r)
    return out


def scored_units(book: Book) -> list[dict]:
    """The current explanation of every unit with its newest score (if any): the web's table and work queue."""
    scores = latest_scores(book)
    out = []
    for (kind, layer, idx), e in sorted(current(book).items()):
        s = scores.get(e["id"], {})
        out.append({"kind": kind, "layer": layer, "idx": idx, "explanation_id": e["id"], "author": e["author"],
                    "sentence": e["sentence"], "has_program": e["program"] is not None,
                    **{k: s.get(k) for k in ("simulation", "detection", "ablation", "carry", "n_windows")}})
    return out


def save_scorecard(book: Book, card: dict, corpus: str | None, settings: dict) -> int:
    card, settings = finite(card), finite(settings)
    cur = book.conn.execute(
        "INSERT INTO scorecards (at, corpus, settings, ce_original, ce_ablated, ce_explained, recovered, n_explained, "
        "n_units, groups, curve) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (time.time(), corpus, json.dumps(settings), card["ce_original"], card["ce_ablated"], card["ce_explained"],
         card["recovered"], card["n_explained"], card["n_units"], json.dumps(card["groups"]),
         json.dumps(card["curve"])))
    return cur.lastrowid


def scorecards(book: Book) -> list[dict]:
    """Every scorecard run, oldest first (the progress curve)."""
    out = []
    for r in book.conn.execute("SELECT * FROM scorecards ORDER BY id"):
        d = dict(r)
        for k in ("settings", "groups", "curve"):
            d[k] = json.loads(d[k])
        out.append(d)
    return out


# ------------------------------------------------------------------ unit section
def read_unit(book: Book, kind: str, layer: int, idx: int) -> dict | None:
    hist = history(book, kind, layer, idx)
    if not hist:
        return None
    cur = current(book, kind).get((kind, layer, idx))
    scores = latest_scores(book)
    return {"current": cur, "score": scores.get(cur["id"]) if cur else None, "history": hist}


def render_html(sec: dict, ctx: Any = None) -> str:
    from .render import esc

    cur, sc = sec["current"], sec["score"]
    parts = [f"<p><b>{esc(cur['sentence'])}</b> <i>({esc(cur['author'])})</i></p>"]
    if sc:
        f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        parts.append(f"<p>simulation {f(sc['simulation'])} · detection {f(sc['detection'])} · "
                     f"ablation {f(sc['ablation'])} · loss carried {f(sc['carry'])} nats/token</p>")
    if len(sec["history"]) > 1:
        parts.append("<details><summary>history</summary><ul>" + "".join(
            f"<li>{esc(h['author'])}: {esc(h['sentence'])}</li>" for h in sec["history"]) + "</ul></details>")
    return "".join(parts)


register_component(Component("explain", MIGRATIONS, read_unit=read_unit, render_html=render_html))
try:
    from .render import RENDERERS

    RENDERERS["explain"] = render_html
except ImportError:  # pragma: no cover
    pass
