"""Unit pages as circuit-tracer feature files: one JSON per unit node of a saved graph, from the book.

circuit-tracer's local frontend shows, for a clicked node, a *feature file* loaded beside the graph JSON.
Its schema (``circuit_tracer/frontend/feature_models.py``: ``Model``, ``ExamplesQuantile``, ``Example``) is

    {"transcoder_id": str, "index": int,
     "examples_quantiles": [{"quantile_name": str,
                             "examples": [{"tokens": [str], "tokens_acts_list": [float],
                                           "train_token_ind": int, "is_repeated_datapoint": bool}]}],
     "top_logits": [str], "bottom_logits": [str], "act_min": float, "act_max": float,
     "quantile_values": [float], "histogram": [float], "activation_frequency": float}

and their frontend reads it (``assets/feature_examples/init-feature-examples.js``,
``assets/attribution_graph/init-cg-feature-detail.js``) for nodes of feature_type "cross layer
transcoder" from ``{scan}/{node.feature}.json``, where ``scan`` is the graph's ``metadata.scan``, or
``metadata.transcoder_list[node.layer]`` when the scan starts with "custom-", and a scan starting with "./"
is a path on their local server (``./data/...`` is its data folder). So :func:`write_for_frontend`
writes ``FEATURES/L{layer}/{feature}.json`` for every head / neuron node, with ``feature`` the number
:func:`.exchange.export_graph` gives the node (neuron: its index; head: ``HEAD_BASE + head * 1000 +
source position``), and the graph JSON with ``transcoder_list[l] = "./data/<FEATURES relative to the graph
JSON's folder>/L{l}"`` (see :mod:`.exchange`), and adds the graph to that folder's
``graph-metadata.json`` (their frontend's list of graphs). Served with circuit-tracer's
``frontend.local_server.serve(data_dir=<the graph JSON's folder>)``, a graph saved as ``NAME.json`` opens
as slug NAME with its feature files.

What each field holds (all from the book; nothing is recomputed):

    neuron (layer l, index i)
      examples_quantiles   "Top activations": the scan's top examples (``book.scan.top_examples``), then
                           one list per activation band, highest first, named by its value range
                           (``quantile_examples`` / ``band_range``)
      tokens               the book's token strings of the window (positions past the story dropped),
                           tokens_acts_list the activation on each (NaN -> 0), train_token_ind the focus
      is_repeated_datapoint   the same (story, token) already shown higher up in this file
      top/bottom_logits    the tokens its direct output path promotes / suppresses (circuits stage,
                           ``stored_neuron_output_effect``); [] when the book has no circuits
      act_min / act_max    the scan's min / max; activation_frequency its fire rate (share of tokens > 0)
      histogram            the scan's histogram counts from the bin holding act_min to the bin holding act_max
                           (so its span is at most one bin wider at each end than [act_min, act_max])
      quantile_values      q = 1..100: the upper edge of the bin where the cumulative count reaches q%
                           (clipped to [act_min, act_max]; exact to one bin width)
    head (layer l, head h, read at source position k)
      examples_quantiles   "Strongest attention": the scan's top examples; tokens_acts_list the attention
                           from the focus (query) token to every window token (NaN -> 0)
      top_logits           the outputs its OV circuit promotes most for the token at k in this prompt
                           (``head_ov_top(source=...)``); bottom_logits [] (the book keeps only the top
                           of each OV row)
      act_min 0, act_max 1 (attention weights); histogram, quantile_values []; activation_frequency 1.0
      (a head attends at every query)

A head's file depends on the prompt (its top logits are those of the token at its source position), so
give each graph its own features folder (``features/NAME``). A book whose model is not the graph's, or
that was never scanned, is refused: the files would describe other units. Everything is JSON (no HTML); :func:`dumps` refuses NaN / infinity.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path

from ..errors import CircuitbookError
from .exchange import ct_feature, export_saved
from .types import Graph, Node

N_LOGITS = 10


class FeatureFileError(CircuitbookError):
    """Feature files that cannot be written from this book for this graph."""


def _finite(x, default: float = 0.0) -> float:
    return float(x) if x is not None and math.isfinite(x) else default


def _examples(book, exs, seen: set) -> list[dict]:
    out = []
    for ex in exs:
        strs = ex.token_strs(book)
        keep = [i for i, t in enumerate(ex.tokens) if t >= 0]
        key = (ex.story, ex.offset)
        out.append({"tokens": [strs[i] for i in keep],
                    "tokens_acts_list": [_finite(ex.values[i]) for i in keep],
                    "train_token_ind": keep.index(ex.focus) if ex.focus in keep else 0,
                    "is_repeated_datapoint": key in seen})
        seen.add(key)
    return out


def _hist(st) -> tuple[list[float], list[float]]:
    """(histogram, quantile_values) of a neuron's scan statistics (module docstring)."""
    counts = list(st.hist_counts or [])
    if not counts or not sum(counts) or not all(x is not None and math.isfinite(x) for x in (st.min, st.max)):
        return [], []
    edges = st.hist_edges
    w = edges[1] - edges[0]
    clamp = lambda b: min(max(b, 0), len(counts) - 1)  # noqa: E731
    lo = clamp(math.ceil(st.min / w) + len(counts) // 2 - 1)
    hi = clamp(math.ceil(st.max / w) + len(counts) // 2 - 1)
    lo, hi = min(lo, hi), max(lo, hi)
    hist = [float(c) for c in counts[lo:hi + 1]]
    total, cum, b, qs = sum(hist), 0.0, 0, []
    for q in range(1, 101):
        while b < len(hist) - 1 and cum + hist[b] < q / 100 * total:
            cum += hist[b]
            b += 1
        qs.append(min(max(edges[lo + b + 1], st.min), st.max))
    qs[-1] = float(st.max)
    return hist, qs


def _logits(fn) -> tuple[list[str], list[str]]:
    try:
        r = fn()
    except sqlite3.OperationalError:  # a book opened read-only before the circuits tables existed
        return [], []
    if r is None:
        return [], []
    if hasattr(r, "top"):
        return list(r.top.strs), list(r.bottom.strs)
    return list(r.strs), []


def unit_feature(book, n: Node, g: Graph, n_logits: int = N_LOGITS, top: int | None = None,
                 per_band: int | None = None) -> dict:
    """The feature file of unit node ``n`` of ``g`` (module docstring), from ``book``'s scan and circuits."""
    from ..book import circuits as bc
    from ..book import scan as bs

    feat = ct_feature(n, g)
    seen: set = set()
    d = {"transcoder_id": f"circuitbook:{g.model}/L{n.layer}", "index": feat}
    if n.kind == "head":
        st = bs.head_stats(book, n.layer, n.index)
        if st is None:
            raise FeatureFileError(f"the book's scan has no head {n.layer}.{n.index} (node {n.id})")
        qs = [{"quantile_name": "Strongest attention",
               "examples": _examples(book, bs.top_examples(book, "head", n.layer, n.index, top), seen)}]
        src_tok = g.tokens[n.src] if n.src is not None and 0 <= n.src < len(g.tokens) else None
        tl, bl = _logits(lambda: None if src_tok is None else
                         bc.head_ov_top(book, n.layer, n.index, source=src_tok, k=n_logits))
        return {**d, "examples_quantiles": qs, "top_logits": tl, "bottom_logits": bl, "act_min": 0.0,
                "act_max": 1.0, "quantile_values": [], "histogram": [], "activation_frequency": 1.0}
    if n.kind != "neuron":
        raise FeatureFileError(f"node {n.id}: feature files are written for head and neuron nodes")
    st = bs.neuron_stats(book, n.layer, n.index)
    if st is None:
        raise FeatureFileError(f"the book's scan has no neuron {n.layer}.{n.index} (node {n.id})")
    qs = [{"quantile_name": "Top activations",
           "examples": _examples(book, bs.top_examples(book, "neuron", n.layer, n.index, top), seen)}]
    for band, exs in bs.quantile_examples(book, n.layer, n.index, per_band).items():
        lo, hi = bs.band_range(band, st.hist_exp)
        qs.append({"quantile_name": f"Activation in ({lo:.3g}, {hi:.3g}]", "examples": _examples(book, exs, seen)})
    tl, bl = _logits(lambda: bc.stored_neuron_output_effect(book, n.layer, n.index, k=n_logits))
    hist, qv = _hist(st)
    return {**d, "examples_quantiles": qs, "top_logits": tl, "bottom_logits": bl, "act_min": _finite(st.min),
            "act_max": _finite(st.max), "quantile_values": qv, "histogram": hist,
            "activation_frequency": _finite(st.fire_rate)}


def check_book(book, s) -> None:
    """FeatureFileError unless ``book`` holds a scan of the model saved graph ``s`` was computed with."""
    from ..book import scan as bs

    if bs.scan_info(book) is None:
        raise FeatureFileError(f"{book.path} has no scan: feature files are the scan's examples "
                               f"(run circuitbook scan first)")
    fp = book.get_meta("model_fingerprint")
    if s.model_fingerprint and fp and fp != s.model_fingerprint:
        raise FeatureFileError(f"graph {s.name!r} was computed with model {s.model_fingerprint}, but {book.path} "
                               f"describes model {fp}: its feature files would describe other units")


def feature_files(book, s, **kw) -> dict[tuple[int, int], dict]:
    """{(layer, feature): feature file} for every head / neuron node of saved graph ``s``."""
    check_book(book, s)
    out: dict[tuple[int, int], dict] = {}
    owner: dict[tuple[int, int], tuple] = {}
    for n in s.graph.nodes:
        if n.kind not in ("head", "neuron"):
            continue
        key = (n.layer, ct_feature(n, s.graph))
        unit = (n.kind, n.index, n.src if n.kind == "head" else None)
        if owner.setdefault(key, unit) != unit:
            raise FeatureFileError(f"layer {n.layer} feature {key[1]} would name two units ({owner[key]} and "
                                   f"{unit}); the prompt is too long for the head numbering")
        if key not in out:
            out[key] = unit_feature(book, n, s.graph, **kw)
    return out


def dumps(d: dict) -> str:
    return json.dumps(d, allow_nan=False, ensure_ascii=False)


@dataclasses.dataclass
class FrontendExport:
    graph: dict  # the graph JSON written
    graph_path: Path
    feature_paths: list[Path]
    metadata_path: Path
    url_prefix: str  # what the graph's transcoder_list entries start with


def write_for_frontend(book, s, graph_path: str | Path, features_dir: str | Path, **kw) -> FrontendExport:
    """Write saved graph ``s`` as their graph JSON at ``graph_path``, its feature files under
    ``features_dir`` (a folder inside the graph JSON's folder) and the graph's entry in that folder's
    graph-metadata.json (module docstring)."""
    graph_path = Path(graph_path)
    root = graph_path.parent.resolve()
    fdir = Path(features_dir).resolve()
    try:
        rel = fdir.relative_to(root).as_posix()
    except ValueError:
        raise FeatureFileError(f"the features folder {features_dir} must lie inside {graph_path.parent or '.'}, "
                               f"the graph JSON's folder: their frontend fetches both from one data folder") from None
    prefix = "./data" if rel == "." else f"./data/{rel}"
    files = feature_files(book, s, **kw)  # everything is read before anything is written
    g = export_saved(s, book, feature_dirs=[f"{prefix}/L{l}" for l in range(s.graph.n_layers)])
    meta_path = root / "graph-metadata.json"
    try:
        listing = json.loads(meta_path.read_text()) if meta_path.exists() else {"graphs": []}
        graphs = [x for x in listing["graphs"] if x.get("slug") != s.name]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise FeatureFileError(f"cannot read {meta_path} (their frontend's list of graphs): {e}") from None
    paths = []
    try:
        for (layer, feat), d in sorted(files.items()):
            p = fdir / f"L{layer}" / f"{feat}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(dumps(d))
            paths.append(p)
        graph_path.write_text(json.dumps(g, allow_nan=False))
        meta_path.write_text(json.dumps({**listing, "graphs": graphs + [g["metadata"]]}, indent=1))
    except (OSError, ValueError) as e:  # ValueError: a NaN, which their frontend's JSON parser refuses
        raise FeatureFileError(f"cannot write the frontend files: {e}") from None
    return FrontendExport(g, graph_path, paths, meta_path, prefix)
