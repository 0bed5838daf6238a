"""The dictionary stage's tables, and the ``feature`` unit kind.

    dictionaries         one row per dictionary: its number (0, 1, ... in the order they were added; the
                         ``layer`` slot of its features' unit addresses), unique name, kind, activation, model
                         layer, d_in, d_sae, k, settings (JSON: the DictionaryConfig, the training settings
                         and summary, where it came from), the weights as a safetensors blob in SAELens's
                         layout (or ``path`` to a SAELens directory when kept outside the book)
    dictionary_metrics   one row per measurement (dictionary, corpus): L0, FVU, dead / dense fractions,
                         spliced CE / KL / loss recovered with and without the error term, the whole result
                         as JSON and every feature's density (float64 bytes)
    dictionary_density   the feature-density histogram of a measurement: (bin, lo, hi, count) of log10 density

Features are units: ``feature/<dictionary number>/<idx>`` (key ``F<number>.<idx>``). Their count comes from
this component's ``unit_context`` contribution (``dictionary_features``: {number: d_sae}), so labels, notes
and ``book.unit("feature", n, i)`` work and check indices like any other kind. A feature has no tap in
``model/forward.py``: its activation is the dictionary's encoding of the layer's input
(``circuitbook.dictionary.features``); the kind's ``tap`` names the hook its dictionary writes to for
dictionary 0 and ``unit_axis`` -1 says the tap does not index features (resampling refuses it).

Query API: :func:`save_dictionary`, :func:`save_measured_dictionary` (dictionary + measurement, one transaction), :func:`dictionaries`, :func:`get_dictionary`, :func:`weights_blob`,
:func:`save_metrics`, :func:`metrics`, :func:`latest_metrics`, :func:`density_histogram`, :func:`feature_density`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import numpy as np

from ..units import UnitKind, register_unit_kind
from .core import Book, BookError, Component, finite, register_component

MIGRATIONS = [
    """
    CREATE TABLE dictionaries (
        number INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL, activation TEXT NOT NULL, layer INTEGER NOT NULL,
        d_in INTEGER NOT NULL, d_sae INTEGER NOT NULL, k INTEGER,
        settings TEXT NOT NULL,
        weights BLOB, path TEXT,
        model_fingerprint TEXT, corpus TEXT,
        created REAL NOT NULL,
        CHECK (weights IS NOT NULL OR path IS NOT NULL)
    );
    CREATE TABLE dictionary_metrics (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        number INTEGER NOT NULL REFERENCES dictionaries(number) ON DELETE CASCADE,
        corpus TEXT NOT NULL, n_tokens INTEGER NOT NULL,
        l0 REAL, fvu REAL, dead_fraction REAL, dense_fraction REAL,
        ce_original REAL, ce_spliced REAL, ce_spliced_error REAL, ce_zero REAL, ce_mean REAL,
        kl REAL, kl_error REAL, recovered_zero REAL, recovered_mean REAL,
        recovered_zero_error REAL, recovered_mean_error REAL,
        result TEXT NOT NULL, density BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE dictionary_density (
        metrics_id INTEGER NOT NULL REFERENCES dictionary_metrics(id) ON DELETE CASCADE,
        bin INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (metrics_id, bin)
    );
    """,
]

_METRIC_COLS = ("n_tokens", "l0", "fvu", "dead_fraction", "dense_fraction", "ce_original", "ce_spliced",
                "ce_spliced_error", "ce_zero", "ce_mean", "kl", "kl_error", "recovered_zero", "recovered_mean",
                "recovered_zero_error", "recovered_mean_error")


_num = finite


# --------------------------------------------------------------------------- dictionaries
def _insert_dictionary(book: Book, c, name: str, cfg: dict, settings: dict, weights, path, model_fingerprint,
                       corpus, replace: bool) -> int:
    if not name or "/" in name:
        raise BookError(f"dictionary name {name!r}: give a non-empty name without '/'")
    if weights is None and path is None:
        raise BookError("a dictionary needs its weights or a path to them")
    row = c.execute("SELECT number FROM dictionaries WHERE name = ?", (name,)).fetchone()
    if row is not None and not replace:
        raise BookError(f"{book.path} already has a dictionary named {name!r} (number {row[0]}); "
                        f"choose another --name or --overwrite")
    number = row[0] if row is not None else c.execute(
        "SELECT coalesce(max(number) + 1, 0) FROM dictionaries").fetchone()[0]
    c.execute("DELETE FROM dictionaries WHERE number = ?", (number,))
    c.execute("INSERT INTO dictionaries (number, name, kind, activation, layer, d_in, d_sae, k, settings, weights, "
              "path, model_fingerprint, corpus, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
              (number, name, cfg["kind"], cfg["activation"], cfg["layer"], cfg["d_in"], cfg["d_sae"], cfg.get("k"),
               json.dumps(finite(settings), sort_keys=True, default=str), weights, path, model_fingerprint, corpus,
               time.time()))
    return number


def save_dictionary(book: Book, name: str, cfg: dict, settings: dict, weights: bytes | None = None,
                    path: str | None = None, model_fingerprint: str | None = None, corpus: str | None = None,
                    replace: bool = False) -> int:
    """Store a dictionary (``cfg``: DictionaryConfig.to_dict()); returns its number. A name already in the book
    is an error unless ``replace`` (which keeps the number, so labels of its features stay addressed)."""
    with book.transaction() as c:
        return _insert_dictionary(book, c, name, cfg, settings, weights, path, model_fingerprint, corpus, replace)


def save_measured_dictionary(book: Book, name: str, cfg: dict, settings: dict, weights: bytes, measurement: tuple,
                             model_fingerprint: str | None = None, corpus: str | None = None,
                             replace: bool = False) -> tuple[int, int]:
    """Store a dictionary and its first measurement (``measurement``: the (corpus, result, density, hist) of
    :func:`save_metrics`) in ONE transaction, so a kill between the two cannot leave a dictionary without
    its measurement; returns (number, metrics id)."""
    with book.transaction() as c:
        number = _insert_dictionary(book, c, name, cfg, settings, weights, None, model_fingerprint, corpus, replace)
        return number, _insert_metrics(c, number, *measurement)


def _row(r) -> dict:
    d = {k: r[k] for k in r.keys() if k != "weights"}
    d["settings"] = json.loads(d["settings"])
    return d


def dictionaries(book: Book) -> list[dict]:
    """Every dictionary (without weights), by number."""
    return [_row(r) for r in book.conn.execute(
        "SELECT number, name, kind, activation, layer, d_in, d_sae, k, settings, path, model_fingerprint, corpus, "
        "created FROM dictionaries ORDER BY number")]


def get_dictionary(book: Book, which: str | int) -> dict:
    """One dictionary by name or number (BookError naming the ones there are otherwise)."""
    col = "number" if isinstance(which, int) or str(which).isdigit() else "name"
    key = int(which) if col == "number" else str(which)
    r = book.conn.execute(f"SELECT number, name, kind, activation, layer, d_in, d_sae, k, settings, path, "
                          f"model_fingerprint, corpus, created FROM dictionaries WHERE {col} = ?", (key,)).fetchone()
    if r is None:
        have = ", ".join(f"{d['number']} {d['name']!r}" for d in dictionaries(book)) or "none"
        raise BookError(f"{book.path} has no dictionary {which!r} (it has: {have})")
    return _row(r)


def weights_blob(book: Book, number: int) -> bytes | None:
    r = book.conn.execute("SELECT weights FROM dictionaries WHERE number = ?", (number,)).fetchone()
    return None if r is None or r[0] is None else bytes(r[0])


# --------------------------------------------------------------------------- measurements
def _insert_metrics(c, number: int, corpus: str, result: dict, density, hist) -> int:
    dens = np.asarray(density, dtype=np.float64)
    cur = c.execute(
        f"INSERT INTO dictionary_metrics (number, corpus, {', '.join(_METRIC_COLS)}, result, density, created) "
        f"VALUES ({', '.join('?' * (len(_METRIC_COLS) + 5))})",
        (number, corpus, *[_num(result.get(k)) for k in _METRIC_COLS],
         json.dumps(finite(result), default=lambda v: None), dens.tobytes(), time.time()))
    mid = cur.lastrowid
    c.executemany("INSERT INTO dictionary_density VALUES (?, ?, ?, ?, ?)",
                  [(mid, i, lo, hi, int(n)) for i, (lo, hi, n) in enumerate(hist)])
    return mid


def save_metrics(book: Book, number: int, corpus: str, result: dict, density, hist: list[tuple[float, float, int]]) -> int:
    """Store one measurement (``result``: SpliceResult.to_dict(); ``density``: per-feature densities)."""
    get_dictionary(book, number)
    with book.transaction() as c:
        return _insert_metrics(c, number, corpus, result, density, hist)


def metrics(book: Book, number: int) -> list[dict]:
    """Every measurement of a dictionary (newest last), without the density array."""
    out = []
    for r in book.conn.execute(f"SELECT id, corpus, {', '.join(_METRIC_COLS)}, created FROM dictionary_metrics "
                               f"WHERE number = ? ORDER BY id", (number,)):
        out.append(dict(r))
    return out


def latest_metrics(book: Book, number: int) -> dict | None:
    m = metrics(book, number)
    return m[-1] if m else None


def density_histogram(book: Book, metrics_id: int) -> list[tuple[float, float, int]]:
    return [(r[0], r[1], r[2]) for r in book.conn.execute(
        "SELECT lo, hi, count FROM dictionary_density WHERE metrics_id = ? ORDER BY bin", (metrics_id,))]


def feature_density(book: Book, number: int) -> np.ndarray | None:
    """Per-feature densities of the latest measurement of a dictionary (None if never measured)."""
    r = book.conn.execute("SELECT density FROM dictionary_metrics WHERE number = ? ORDER BY id DESC LIMIT 1",
                          (number,)).fetchone()
    return None if r is None else np.frombuffer(bytes(r[0]), dtype=np.float64)


# --------------------------------------------------------------------------- the feature unit kind
def _features(cfg: Any) -> Mapping[int, int]:
    return cfg.get("dictionary_features", {}) if isinstance(cfg, Mapping) else {}


FEATURE = register_unit_kind(UnitKind(
    name="feature", letter="F", title="feature",
    count=lambda cfg, number: int(_features(cfg).get(number, 0)),
    tap="blocks.{layer}.hook_mlp_out", unit_axis=-1,
    writes="activation x W_dec[idx] ([d_model]) of its dictionary into the residual stream, in place of the MLP",
    write_weights=None, stats="activation", order=2, sublayer=2,
    layers=lambda cfg: (max(_features(cfg)) + 1) if _features(cfg) else 0,
))


def _unit_context(book: Book) -> dict:
    return {"dictionary_features": {r[0]: r[1] for r in book.conn.execute("SELECT number, d_sae FROM dictionaries")}}


def _read_unit(book: Book, kind: str, layer: int, idx: int):
    if kind != "feature":
        return None
    d = get_dictionary(book, layer)
    sec = {"dictionary": d["name"], "number": d["number"], "kind": d["kind"], "activation": d["activation"],
           "model_layer": d["layer"], "d_sae": d["d_sae"]}
    dens = feature_density(book, layer)
    if dens is not None and idx < len(dens):
        sec["density"] = float(dens[idx])
    return sec


def _render(sec) -> str:
    import html

    e = html.escape
    dens = f", density {sec['density']:.2e}" if "density" in sec else ""
    return (f"<p>feature of dictionary {sec['number']} <b>{e(sec['dictionary'])}</b> ({e(sec['kind'])}, "
            f"{e(sec['activation'])}, layer {sec['model_layer']}, {sec['d_sae']} features){dens}</p>")


register_component(Component("dictionary", MIGRATIONS, read_unit=_read_unit, render_html=_render,
                             unit_context=_unit_context))
