"""The handcraft stage's tables: every evaluated spec with its figures, and every coverage run.

    handcraft_evals   one row per evaluation: the spec (its text and name), model fingerprint, corpus,
                      headline figures as columns, and the whole Evaluation as JSON (``result``)
    handcraft_units   which units each evaluated spec replaced or added (role 'replaced' | 'added')
    coverage_runs     one row per coverage run: headline figures and the whole Coverage as JSON

Query API (for the web layer and notebooks): :func:`save_evaluation`, :func:`evaluations`,
:func:`evaluation`, :func:`save_coverage`, :func:`coverage_runs`, :func:`latest_coverage`; a unit's
``handcraft`` section lists the evaluated specs that replaced it.
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import Any

from ..units import kind_names
from .core import Book, BookError, Component, register_component

MIGRATIONS = [
    """
    CREATE TABLE handcraft_evals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        model_fingerprint TEXT, corpus TEXT,
        n_tokens INTEGER NOT NULL,
        ce_original REAL NOT NULL, ce_handcrafted REAL NOT NULL, kl REAL, top1 REAL,
        recovered_zero REAL, recovered_mean REAL,
        result TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE handcraft_units (
        eval_id INTEGER NOT NULL REFERENCES handcraft_evals(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('replaced', 'added')),
        name TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX handcraft_units_unit ON handcraft_units (kind, layer, idx);
    CREATE TABLE coverage_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model_fingerprint TEXT, corpus TEXT, mode TEXT NOT NULL,
        n_tokens INTEGER NOT NULL, ce_original REAL NOT NULL, ce_ablated REAL NOT NULL, ce_kept REAL NOT NULL,
        recovered REAL, n_units INTEGER NOT NULL,
        result TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
    # run_key: what was evaluated (spec text, model, corpus, settings); storing the same key again replaces
    # that evaluation in place, so a re-run (e.g. after a kill) leaves the book as one run would
    """
    ALTER TABLE handcraft_evals ADD COLUMN run_key TEXT;
    CREATE UNIQUE INDEX handcraft_evals_run_key ON handcraft_evals (run_key) WHERE run_key IS NOT NULL;
    """,
]


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def save_evaluation(book: Book, name: str, spec_text: str, evaluation: dict, units: list[tuple[str, int, int, str, str]],
                    model_fingerprint: str | None = None, corpus: str | None = None, run_key: str | None = None) -> int:
    """Store one evaluation. ``evaluation``: Evaluation.to_dict(); ``units``: (kind, layer, idx, role, name).
    Returns its id. All or nothing. With ``run_key``, an evaluation stored under the same key is replaced
    in place (same id): re-running the same evaluation does not add a second one."""
    rec = evaluation.get("recovered", {})
    row = (name, spec_text, model_fingerprint, corpus, evaluation["n_tokens"], evaluation["ce_original"],
           evaluation["ce_handcrafted"], evaluation.get("kl"), evaluation.get("top1_agreement"),
           _num(rec.get("zero")), _num(rec.get("mean")), json.dumps(evaluation), time.time(), run_key)
    with book.transaction() as c:
        old = c.execute("SELECT id FROM handcraft_evals WHERE run_key = ?", (run_key,)).fetchone() \
            if run_key is not None else None
        if old is not None:
            eid = old[0]
            c.execute("DELETE FROM handcraft_units WHERE eval_id = ?", (eid,))
            c.execute("UPDATE handcraft_evals SET name=?, spec=?, model_fingerprint=?, corpus=?, n_tokens=?, "
                      "ce_original=?, ce_handcrafted=?, kl=?, top1=?, recovered_zero=?, recovered_mean=?, result=?, "
                      "created=?, run_key=? WHERE id = ?", (*row, eid))
        else:
            eid = c.execute(
                "INSERT INTO handcraft_evals (name, spec, model_fingerprint, corpus, n_tokens, ce_original, "
                "ce_handcrafted, kl, top1, recovered_zero, recovered_mean, result, created, run_key) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row).lastrowid
        c.executemany("INSERT INTO handcraft_units (eval_id, kind, layer, idx, role, name) VALUES (?,?,?,?,?,?)",
                      [(eid, k, l, i, role, nm) for k, l, i, role, nm in units if k in kind_names()])
    return eid


def evaluations(book: Book) -> list[dict]:
    """Every stored evaluation's headline row (no spec text / full result), oldest first."""
    return [dict(r) for r in book.conn.execute(
        "SELECT id, name, model_fingerprint, corpus, n_tokens, ce_original, ce_handcrafted, kl, top1, "
        "recovered_zero, recovered_mean, created FROM handcraft_evals ORDER BY id")]


def evaluation(book: Book, eval_id: int) -> dict:
    """One evaluation in full: the row, ``spec`` (its text), ``result`` (Evaluation dict) and ``units``."""
    r = book.conn.execute("SELECT * FROM handcraft_evals WHERE id = ?", (eval_id,)).fetchone()
    if r is None:
        raise BookError(f"no handcraft evaluation {eval_id} in {book.path}")
    d = dict(r)
    d["result"] = json.loads(d["result"])
    d["units"] = [dict(u) for u in book.conn.execute(
        "SELECT kind, layer, idx, role, name FROM handcraft_units WHERE eval_id = ? ORDER BY kind, layer, idx",
        (eval_id,))]
    return d


def save_coverage(book: Book, coverage: dict, model_fingerprint: str | None = None, corpus: str | None = None) -> int:
    """Store one coverage run (``coverage``: Coverage.to_dict()). Returns its id."""
    with book.transaction() as c:
        cur = c.execute(
            "INSERT INTO coverage_runs (model_fingerprint, corpus, mode, n_tokens, ce_original, ce_ablated, ce_kept,"
            " recovered, n_units, result, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (model_fingerprint, corpus, coverage["mode"], coverage["n_tokens"], coverage["ce_original"],
             coverage["ce_ablated"], coverage["ce_kept"], _num(coverage["recovered"]), len(coverage["units"]),
             json.dumps(coverage), time.time()))
        return cur.lastrowid


def coverage_runs(book: Book) -> list[dict]:
    """Every coverage run's headline row, oldest first."""
    return [dict(r) for r in book.conn.execute(
        "SELECT id, model_fingerprint, corpus, mode, n_tokens, ce_original, ce_ablated, ce_kept, recovered, n_units,"
        " created FROM coverage_runs ORDER BY id")]


def latest_coverage(book: Book) -> dict | None:
    """The most recent coverage run in full (row + ``result``), or None."""
    r = book.conn.execute("SELECT * FROM coverage_runs ORDER BY id DESC LIMIT 1").fetchone()
    if r is None:
        return None
    d = dict(r)
    d["result"] = json.loads(d["result"])
    return d


def _read_unit(book: Book, kind: str, layer: int, idx: int):
    rows = book.conn.execute(
        "SELECT e.id, e.name, u.role, u.name AS part, e.recovered_zero, e.recovered_mean, e.ce_original, "
        "e.ce_handcrafted FROM handcraft_units u JOIN handcraft_evals e ON e.id = u.eval_id "
        "WHERE u.kind = ? AND u.layer = ? AND u.idx = ? ORDER BY e.id", (kind, layer, idx)).fetchall()
    if not rows:
        return None
    return {"specs": [dict(r) for r in rows]}


def _render(section, ctx: Any = None) -> str:
    """The handcraft section: every evaluation this unit took part in (strings escaped)."""
    e = html.escape
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    rows = "".join(f"<tr><td>{s['id']}</td><td>{e(s['name'])}</td><td>{e(s['part'])}</td><td>{e(s['role'])}</td>"
                   f"<td>{f(s['recovered_mean'])}</td><td>{f(s['recovered_zero'])}</td></tr>" for s in section["specs"])
    return ("<table><tr><th>eval</th><th>spec</th><th>part</th><th>role</th><th>recovered (mean)</th>"
            f"<th>recovered (zero)</th></tr>{rows}</table>")


register_component(Component("handcraft", MIGRATIONS, read_unit=_read_unit, render_html=_render))
