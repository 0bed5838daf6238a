"""Attribution graph -> JSON (documented schema, round-trips) and -> standalone SVG / HTML.

JSON schema ("circuitbook.graph/1"), every float in logit units unless noted:

    {"schema": "circuitbook.graph/1", "model": str,
     "prompt": {"tokens": [int], "token_strs": [str]},                  # position order
     "target": {"pos": int, "token": int, "token_str": str, "contrast": int|null,
                "contrast_str": str|null, "logit": float},             # logit: logit (or difference)
     "constants": {name: float},   # direct constant terms: sum(direct of all nodes at pos) + sum == logit
     "bias_flow": {name: float},   # total effect of each constant: sum(value of all inputs) + sum == logit
     "n_layers": int, "n_candidates": int, "settings": {...pruning options...},
     "nodes": [{"id": str, "kind": "input"|"head"|"neuron"|"feature"|"error"|"logit", "layer": int,
                "index": int, "pos": int, "src": int|null, "token": str, "value": float, "direct": float,
                "activation": float|null, "label": str|null, "title": str,
                "group": int}],                    # group: feature / error nodes only (dictionary number)
     "edges": [{"source": node id, "target": node id, "weight": float}]}   # |weight| descending

Node fields are those of :class:`~circuitbook.graph.types.Node` (ids "input/{pos}",
"head/{layer}/{head}/{q}/{k}", "neuron/{layer}/{idx}/{pos}", "feature/{dictionary}/{idx}/{pos}",
"error/{layer}/{pos}", "logit"; ordering and edge signs are
documented in :mod:`circuitbook.graph.types`); "title" is derived. The graph stage knows no URLs: the web
layer's JSON endpoint adds a "link" to each node (``circuitbook.web.links.node_url``), and :func:`from_json`
ignores it.

SVG layout: one row per stage of the forward, inputs at the bottom, then for each layer its heads and
its neurons, the logit on top; within a row nodes are ordered by position, source, index. Edge width is
proportional to |weight|, blue for positive, red for negative. Every node is an ``<a>`` (when the caller's
``link(node)`` gives it an href; the web passes ``circuitbook.web.links.node_url``) or ``<g>`` with ``class="cb-node"`` and ``data-id`` (the node id), so a page can navigate or
attach handlers (e.g. ablate on click). All text is escaped; control characters are shown as ``\\xNN``.

Jupyter: :func:`show` wraps a graph in a :class:`GraphView` whose ``_repr_html_`` is :func:`to_html`; when
imported under IPython this module also registers :func:`to_html` as the HTML display of :class:`Graph`,
so a bare ``g`` in a cell renders inline.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import sys
from typing import Callable

from .types import Edge, Graph, GraphError, Node

SCHEMA = "circuitbook.graph/1"

_NODE_FIELDS = ("id", "kind", "layer", "index", "pos", "src", "token", "value", "direct", "activation", "label")


# --------------------------------------------------------------------------- JSON
def to_json(g: Graph) -> dict:
    """The graph as plain JSON-able data (see the module docstring for the schema)."""
    return {
        "schema": SCHEMA, "model": g.model,
        "prompt": {"tokens": list(g.tokens), "token_strs": list(g.token_strs)},
        "target": {"pos": g.pos, "token": g.target, "token_str": g.target_str, "contrast": g.contrast,
                   "contrast_str": g.contrast_str, "logit": g.logit},
        "constants": dict(g.constants), "bias_flow": dict(g.bias_flow),
        "n_layers": g.n_layers, "n_candidates": g.n_candidates, "settings": dict(g.settings),
        "nodes": [{**{f: getattr(n, f) for f in _NODE_FIELDS}, "title": n.title,
                   **({"stage_hint": n.stage_hint} if n.stage_hint is not None else {}),
                   **({"group": n.group} if n.group is not None else {})} for n in g.nodes],
        "edges": [{"source": e.source, "target": e.target, "weight": e.weight} for e in g.edges],
    }


def dumps(g: Graph, **kw) -> str:
    return json.dumps(to_json(g), **kw)


def from_json(d: dict | str) -> Graph:
    """Inverse of :func:`to_json` (accepts the dict or its JSON text)."""
    if isinstance(d, str):
        d = json.loads(d)
    if d.get("schema") != SCHEMA:
        raise GraphError(f"not a circuitbook graph (schema {d.get('schema')!r}, expected {SCHEMA!r})")
    t = d["target"]
    return Graph(
        model=d["model"], tokens=list(d["prompt"]["tokens"]), token_strs=list(d["prompt"]["token_strs"]),
        pos=t["pos"], target=t["token"], target_str=t["token_str"], contrast=t["contrast"],
        contrast_str=t["contrast_str"], logit=t["logit"], constants=dict(d["constants"]),
        bias_flow=dict(d["bias_flow"]),
        nodes=[Node(**{f: n[f] for f in _NODE_FIELDS}, stage_hint=n.get("stage_hint"), group=n.get("group"))
               for n in d["nodes"]],
        edges=[Edge(e["source"], e["target"], e["weight"]) for e in d["edges"]],
        n_layers=d["n_layers"], n_candidates=d["n_candidates"], settings=dict(d.get("settings", {})),
    )


# --------------------------------------------------------------------------- SVG
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def esc(s) -> str:
    """Text safe inside XML/HTML text and attributes: escapes <, >, &, quotes; makes control characters
    visible (newline as \\n) since XML cannot carry them."""
    s = str(s).replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    s = _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else "\ufffd", s)
    return html.escape(s, quote=True)


_STYLE = {  # kind: (fill, stroke)
    "input": ("#edf2f7", "#4a5568"), "head": ("#fefcbf", "#b7791f"),
    "neuron": ("#c6f6d5", "#2f855a"), "logit": ("#e9d8fd", "#6b46c1"),
    "supernode": ("#fed7e2", "#b83280"), "feature": ("#bee3f8", "#2b6cb0"), "error": ("#e2e8f0", "#718096"),
}


def _short(n: Node) -> str:
    if n.kind == "neuron":
        return f"N{n.index}"
    if n.kind == "feature":
        return f"F{n.index}"
    if n.kind == "error":
        return "error"
    if n.kind == "head":
        return f"H{n.index} {n.pos}\u2190{n.src}"
    if n.kind == "supernode":
        return n.token if len(n.token) <= 14 else n.token[:13] + "\u2026"
    tok = n.token if len(n.token) <= 10 else n.token[:9] + "\u2026"
    return tok


def _tooltip(n: Node) -> str:
    """Escaped tooltip text, one fact per line."""
    lines = [n.title]
    if n.label:
        lines.append(f"label: {n.label}")
    lines.append(f"value {n.value:+.4f}  direct {n.direct:+.4f}")
    if n.activation is not None and n.kind != "logit":
        lines.append({"head": "attention ", "error": "error norm "}.get(n.kind, "activation ") + f"{n.activation:.4f}")
    if n.kind == "head":
        lines.append(f"source token {n.token!r}")
    return "\n".join(map(esc, lines))  # escaped line by line: real line breaks in the tooltip


def _rows(g: Graph) -> list[tuple[str, list[Node]]]:
    names = ["inputs"] + [f"L{l} {k}" for l in range(g.n_layers) for k in ("attn", "mlp")] + ["logit"]
    rows: list[list[Node]] = [[] for _ in names]
    for n in g.nodes:
        rows[min(n.stage, len(names) - 1)].append(n)
    for r in rows:
        r.sort(key=lambda n: (n.pos, -1 if n.src is None else n.src, n.index))
    return list(zip(names, rows))


def to_svg(g: Graph, link: Callable[[Node], str | None] | None = None, node_w: int = 96, row_h: int = 96) -> str:
    """A standalone SVG document (string). ``link(node)`` gives each node's href (None, or no ``link``:
    the node is a plain ``<g>``)."""
    link = link or (lambda n: None)
    rows = _rows(g)
    margin, label_w, nh = 20, 70, 34
    widest = max(1, max(len(r) for _, r in rows))
    width = max(640, label_w + margin * 2 + widest * (node_w + 10))
    height = margin * 2 + 40 + row_h * len(rows)
    xy: dict[str, tuple[float, float]] = {}
    for i, (_, r) in enumerate(rows):
        y = height - margin - row_h * i - row_h / 2
        span = width - label_w - 2 * margin
        for j, n in enumerate(r):
            xy[n.id] = (label_w + margin + span * (j + 0.5) / len(r), y)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="cb-graph" '
           f'font-family="sans-serif" font-size="11">']
    tgt = f"logit[{esc(repr(g.target_str))}]" + (f" - logit[{esc(repr(g.contrast_str))}]" if g.contrast is not None else "")
    out.append(f'<text x="{margin}" y="{margin + 4}" font-size="13">{tgt} at position {g.pos} = {g.logit:.4f}'
               f' \u00b7 {len(g.nodes) - 1} of {g.n_candidates} nodes, {len(g.edges)} edges'
               f' \u00b7 <tspan fill="#2b6cb0">blue +</tspan> <tspan fill="#c53030">red \u2212</tspan></text>')
    for i, (name, _) in enumerate(rows):
        y = height - margin - row_h * i - row_h / 2
        out.append(f'<text x="{margin}" y="{y + 4:.1f}" fill="#718096">{esc(name)}</text>')

    wmax = max((abs(e.weight) for e in g.edges), default=1.0) or 1.0
    out.append('<g class="cb-edges" fill="none">')
    for e in sorted(g.edges, key=lambda e: abs(e.weight)):  # strongest drawn last (on top)
        if e.source not in xy or e.target not in xy:
            continue
        (x1, y1), (x2, y2) = xy[e.source], xy[e.target]
        y1, y2 = y1 - nh / 2, y2 + nh / 2
        my = (y1 + y2) / 2
        colour = "#2b6cb0" if e.weight >= 0 else "#c53030"
        wd = 0.5 + 6.0 * abs(e.weight) / wmax
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{my:.1f} {x2:.1f},{my:.1f} {x2:.1f},{y2:.1f}" '
                   f'stroke="{colour}" stroke-width="{wd:.2f}" stroke-opacity="0.55" class="cb-edge" '
                   f'data-source="{esc(e.source)}" data-target="{esc(e.target)}" data-weight="{e.weight:.6g}">'
                   f'<title>{esc(e.source)} \u2192 {esc(e.target)}: {e.weight:+.4f}</title></path>')
    out.append("</g>")

    for n in g.nodes:
        x, y = xy[n.id]
        fill, stroke = _STYLE.get(n.kind, ("#fff", "#000"))
        href = link(n)
        attrs = f'class="cb-node cb-{n.kind}" data-id="{esc(n.id)}" data-value="{n.value:.6g}"'
        out.append(f'<a href="{esc(href)}" xlink:href="{esc(href)}" {attrs}>' if href else f"<g {attrs}>")
        out.append(f"<title>{_tooltip(n)}</title>")
        w = node_w - 8
        if n.kind in ("neuron", "feature"):
            out.append(f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{w / 2:.1f}" ry="{nh / 2}" fill="{fill}" stroke="{stroke}"/>')
        else:
            out.append(f'<rect x="{x - w / 2:.1f}" y="{y - nh / 2:.1f}" width="{w}" height="{nh}" rx="6" '
                       f'fill="{fill}" stroke="{stroke}"/>')
        out.append(f'<text x="{x:.1f}" y="{y - 2:.1f}" text-anchor="middle">{esc(_short(n))}</text>')
        sub = n.label if n.label else (f"@{n.pos}" if n.kind in ("input", "neuron", "feature", "error") else repr(n.token))
        sub = sub if len(sub) <= 16 else sub[:15] + "\u2026"
        out.append(f'<text x="{x:.1f}" y="{y + 11:.1f}" text-anchor="middle" font-size="9" fill="#4a5568">'
                   f'{esc(sub)} {n.value:+.2f}</text>')
        out.append("</a>" if href else "</g>")
    out.append("</svg>")
    return "\n".join(out)


def to_html(g: Graph, link: Callable[[Node], str | None] | None = None) -> str:
    """An HTML fragment for Jupyter: a one-line summary, the SVG (nodes linked by ``link``, as in
    :func:`to_svg`), and the strongest edges as a table."""
    rows = "".join(f"<tr><td>{esc(e.source)}</td><td>{esc(e.target)}</td><td>{e.weight:+.4f}</td></tr>"
                   for e in g.edges[:10])
    prompt = esc("".join(g.token_strs))
    return (f"<div class='cb-graph'><p><b>prompt</b> {prompt}<br><b>target</b> {esc(repr(g.target_str))} at "
            f"position {g.pos}: logit {g.logit:.4f}</p>{to_svg(g, link)}"
            f"<table><tr><th>source</th><th>target</th><th>weight</th></tr>{rows}</table></div>")


# --------------------------------------------------------------------------- Jupyter
@dataclasses.dataclass(frozen=True)
class GraphView:
    """A graph as a notebook shows it: ``show(g)`` as the last line of a cell renders :func:`to_html`."""

    graph: Graph
    link: Callable[[Node], str | None] | None = None

    def _repr_html_(self) -> str:
        return to_html(self.graph, self.link)


def show(g: Graph, link: Callable[[Node], str | None] | None = None) -> GraphView:
    """Wrap ``g`` for inline display in Jupyter (``link``: optional node -> href, as in :func:`to_svg`)."""
    return GraphView(g, link)


def register_ipython() -> bool:
    """Under a running IPython, display every :class:`Graph` as :func:`to_html` (a bare ``g`` in a cell
    renders inline). Returns whether a shell was found; called once when this module is imported."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    shell.display_formatter.formatters["text/html"].for_type(Graph, to_html)
    return True


register_ipython()
