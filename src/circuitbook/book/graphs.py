"""Saved attribution graphs and what a researcher builds on them: supernodes, hypotheses, experiments.

Tables
  graphs (id PK, name UNIQUE, prompt, target, settings JSON, meta JSON, nodes JSON, edges JSON,
          model_fingerprint, book_fingerprint, created)
      one attribution graph as computed: ``nodes`` / ``edges`` are the node and edge lists of the
      ``circuitbook.graph/1`` JSON (``graph.render.to_json``), ``meta`` the rest of that JSON (tokens,
      target, constants, bias flow...), so the graph re-renders with no model. ``target``: the target token id.
  supernodes (graph_id, name, members JSON list of node ids, rule, PK (graph_id, name))
      named groups of the graph's nodes; ``rule`` says how the group was made ("unit", "label", "type",
      "user", ...).
  hypotheses (id PK, graph_id, text, test JSON, threshold, status, created)
      a claim about the graph and the experiment that tests it (``test``: {"kind": "ablate" | "patch" |
      "steer", "supernode", "mode", ...}; ``threshold``: the stated logit change that decides it).
      ``status``: "open" | "supported" | "refuted" (the latest experiment's verdict).
  experiments (id PK, hypothesis_id, result JSON, verdict, model_fingerprint, created)
      one run of a hypothesis' test: the measured changes (``result``) and the verdict.

Storage and queries only; what the rows mean (saving, grouping, running tests) is ``circuitbook.graph``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .core import Book, BookError, Component, register_component

MIGRATIONS = [
    """
    CREATE TABLE graphs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        prompt TEXT NOT NULL,
        target INTEGER NOT NULL,
        settings TEXT NOT NULL,
        meta TEXT NOT NULL,
        nodes TEXT NOT NULL,
        edges TEXT NOT NULL,
        model_fingerprint TEXT,
        book_fingerprint TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE supernodes (
        graph_id INTEGER NOT NULL REFERENCES graphs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        members TEXT NOT NULL,
        rule TEXT NOT NULL DEFAULT 'user',
        PRIMARY KEY (graph_id, name)
    );
    CREATE TABLE hypotheses (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        graph_id INTEGER NOT NULL REFERENCES graphs(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        test TEXT NOT NULL,
        threshold REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'supported', 'refuted')),
        created REAL NOT NULL
    );
    CREATE TABLE experiments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        hypothesis_id INTEGER NOT NULL REFERENCES hypotheses(id) ON DELETE CASCADE,
        result TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('supported', 'refuted')),
        model_fingerprint TEXT,
        created REAL NOT NULL
    );
    """,
]


class GraphNameError(BookError):
    """A saved graph name that exists (without overwrite) or does not exist."""


def _graph_row(r) -> dict:
    d = dict(r)
    for k in ("settings", "meta", "nodes", "edges"):
        d[k] = json.loads(d[k])
    return d


def save_graph(book: Book, name: str, *, prompt: str, target: int, settings: dict, meta: dict, nodes: list,
               edges: list, model_fingerprint: str | None, book_fingerprint: str | None,
               overwrite: bool = False) -> int:
    """Store one graph under ``name``; an existing name is refused unless ``overwrite`` (which replaces the
    graph and drops its supernodes, hypotheses and experiments). Returns the graph id."""
    if not name or len(name) > 200 or "/" in name or name != name.strip():
        raise GraphNameError(f"graph name {name[:40]!r}: give 1..200 characters, no '/' and no surrounding spaces")
    with book.transaction() as c:
        old = c.execute("SELECT id FROM graphs WHERE name = ?", (name,)).fetchone()
        if old is not None:
            if not overwrite:
                raise GraphNameError(f"a graph named {name!r} is already saved in {book.path}; "
                                     f"choose another name or overwrite it")
            c.execute("DELETE FROM graphs WHERE id = ?", (old[0],))
        cur = c.execute(
            "INSERT INTO graphs (name, prompt, target, settings, meta, nodes, edges, model_fingerprint, "
            "book_fingerprint, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (name, prompt, int(target), json.dumps(settings), json.dumps(meta), json.dumps(nodes),
             json.dumps(edges), model_fingerprint, book_fingerprint, time.time()))
        return cur.lastrowid


def graph_row(book: Book, name: str) -> dict:
    """The saved graph ``name`` (JSON columns decoded), or GraphNameError listing what is saved."""
    r = book.conn.execute("SELECT * FROM graphs WHERE name = ?", (name,)).fetchone()
    if r is None:
        have = [g["name"] for g in saved_graphs(book)]
        raise GraphNameError(f"no saved graph named {name!r}" + (f"; saved: {', '.join(have[:10])}" if have
                                                                  else "; the book has none"))
    return _graph_row(r)


def saved_graphs(book: Book) -> list[dict]:
    """Every saved graph's headline (id, name, prompt, target, node / edge / supernode / hypothesis
    counts, created), newest first; none in a book opened read-only before this component existed."""
    if "graphs" not in book.schema_versions():
        return []
    return [dict(r) for r in book.conn.execute(
        "SELECT g.id, g.name, g.prompt, g.target, json_array_length(g.nodes) AS n_nodes, "
        "json_array_length(g.edges) AS n_edges, g.created, "
        "(SELECT count(*) FROM supernodes s WHERE s.graph_id = g.id) AS n_supernodes, "
        "(SELECT count(*) FROM hypotheses h WHERE h.graph_id = g.id) AS n_hypotheses "
        "FROM graphs g ORDER BY g.created DESC, g.id DESC")]


def set_supernodes(book: Book, graph_id: int, groups: list[tuple[str, list[str], str]],
                   replace: bool = False) -> None:
    """Store (name, member node ids, rule) groups for a graph, replacing groups of the same name
    (``replace``: drop all the graph's groups first)."""
    with book.transaction() as c:
        if replace:
            c.execute("DELETE FROM supernodes WHERE graph_id = ?", (graph_id,))
        c.executemany("INSERT OR REPLACE INTO supernodes (graph_id, name, members, rule) VALUES (?,?,?,?)",
                      [(graph_id, n, json.dumps(list(m)), rule) for n, m, rule in groups])


def supernodes(book: Book, graph_id: int) -> list[dict]:
    """[{"name", "members", "rule"}] of a graph, by name."""
    return [{"name": r[0], "members": json.loads(r[1]), "rule": r[2]} for r in book.conn.execute(
        "SELECT name, members, rule FROM supernodes WHERE graph_id = ? ORDER BY name", (graph_id,))]


def add_hypothesis(book: Book, graph_id: int, text: str, test: dict, threshold: float) -> int:
    with book.transaction() as c:
        return c.execute("INSERT INTO hypotheses (graph_id, text, test, threshold, created) VALUES (?,?,?,?,?)",
                         (graph_id, text, json.dumps(test), float(threshold), time.time())).lastrowid


def _hyp(r) -> dict:
    d = dict(r)
    d["test"] = json.loads(d["test"])
    return d


def hypotheses(book: Book, graph_id: int) -> list[dict]:
    return [_hyp(r) for r in book.conn.execute("SELECT * FROM hypotheses WHERE graph_id = ? ORDER BY id",
                                               (graph_id,))]


def hypothesis(book: Book, graph_id: int, hyp_id: int) -> dict:
    r = book.conn.execute("SELECT * FROM hypotheses WHERE graph_id = ? AND id = ?", (graph_id, hyp_id)).fetchone()
    if r is None:
        have = [h["id"] for h in hypotheses(book, graph_id)]
        raise BookError(f"the graph has no hypothesis {hyp_id}" + (f"; it has {have}" if have else "; it has none"))
    return _hyp(r)


def record_experiment(book: Book, hyp_id: int, result: dict, verdict: str, model_fingerprint: str | None) -> int:
    """Store one experiment and set its hypothesis' status to the verdict (one transaction)."""
    with book.transaction() as c:
        eid = c.execute("INSERT INTO experiments (hypothesis_id, result, verdict, model_fingerprint, created) "
                        "VALUES (?,?,?,?,?)", (hyp_id, json.dumps(result), verdict, model_fingerprint,
                                               time.time())).lastrowid
        c.execute("UPDATE hypotheses SET status = ? WHERE id = ?", (verdict, hyp_id))
        return eid


def experiments(book: Book, hyp_id: int) -> list[dict]:
    out = []
    for r in book.conn.execute("SELECT * FROM experiments WHERE hypothesis_id = ? ORDER BY id", (hyp_id,)):
        d: dict[str, Any] = dict(r)
        d["result"] = json.loads(d["result"])
        out.append(d)
    return out


register_component(Component("graphs", MIGRATIONS))
