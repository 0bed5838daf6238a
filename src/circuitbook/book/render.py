"""HTML fragments for one unit's findings: shared by the web pages, the static export and notebooks.

Only the standard library and the book: the web layer wraps these fragments in its page chrome, and a
notebook shows them through :func:`view` (``view(book, "neuron", 0, 896)`` renders inline in Jupyter).

Every piece of text that comes from the book (corpus tokens, labels, notes, token strings) goes through
:func:`esc` (``html.escape`` with quotes), so a story containing ``<script>`` shows as text. Numbers are
formatted here, never interpolated raw from user input.

Sections are rendered by the renderer their component registered (``Component.render_html``, looked up
with ``book.core.section_renderer(name)``: one renderer per section, the same for the web pages, the
static export, ``Unit._repr_html_`` and :func:`view`), otherwise by :func:`value_html`, which recognises
the common shapes (examples with per-token activations, histograms, token/value lists, tables, nested
dicts) and falls back to a key/value table, so a new component shows up without any change here.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any, Callable, Iterable, Sequence

from ..units import kind_names, unit_kind, unit_key

Link = Callable[[str, int, int], str]  # (kind, layer, idx) -> URL of that unit's page


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any) -> str:
    """A number for humans: 4 significant digits, integers as they are."""
    if isinstance(x, bool) or x is None:
        return esc(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.4g}"
    return esc(x)


def show_token(s: str) -> str:
    """A token string made visible: newlines and tabs as symbols (escaped)."""
    return esc(s.replace("\n", "\u21b5").replace("\t", "\u21e5"))


@dataclasses.dataclass
class Ctx:
    """What fragments need besides the data: how to link units and the vocabulary for token ids."""

    link: Link | None = None
    token_strs: Sequence[str] | None = None

    def tok(self, t: Any) -> str:
        if isinstance(t, int) and self.token_strs is not None and 0 <= t < len(self.token_strs):
            return self.token_strs[t]
        return str(t)

    def unit_link(self, kind: str, layer: int, idx: int, text: str | None = None) -> str:
        key = unit_key(kind, layer, idx)
        body = esc(text if text is not None else key)
        if self.link is None:
            return body
        return f"<a class='unit-link' href='{esc(self.link(kind, layer, idx))}'>{body}</a>"


# ------------------------------------------------------------------ primitives
def act_color(a: float, scale: float) -> str:
    """Background for an activation: orange for positive, blue for negative, alpha ~ |a| / scale."""
    if not scale or not math.isfinite(a):
        return "transparent"
    alpha = max(0.0, min(1.0, abs(a) / scale))
    rgb = "255,140,0" if a >= 0 else "60,120,255"
    return f"rgba({rgb},{alpha:.3f})"


def tokens_html(tokens: Sequence[str], acts: Sequence[float] | None = None, scale: float | None = None,
                mark: int | None = None) -> str:
    """A text as token spans, each shaded by its activation with the value on hover (``title``).

    tokens: [pos] strings; acts: [pos] floats (same order) or None; ``mark`` outlines one position (the
    example's max / the query position)."""
    if acts is not None and scale is None:
        finite = [abs(a) for a in acts if a is not None and math.isfinite(a)]
        scale = max(finite, default=0.0)
    out = ["<span class='cb-text'>"]
    for i, t in enumerate(tokens):
        a = acts[i] if acts is not None and i < len(acts) else None
        cls = "tok mark" if i == mark else "tok"
        if a is None:
            out.append(f"<span class='{cls}'>{show_token(t)}</span>")
        else:
            tip = esc(f"{t!r}: {a:.4g}")
            out.append(f"<span class='{cls}' style='background:{act_color(a, scale)}' data-act='{a:.4g}' "
                       f"title='{tip}'>{show_token(t)}</span>")
    out.append("</span>")
    return "".join(out)


def histogram_svg(edges: Sequence[float], counts: Sequence[float], width: int = 360, height: int = 90,
                  log: bool = True, title: str = "") -> str:
    """Inline SVG bar chart. edges: [n_bins + 1] ascending; counts: [n_bins]. ``log`` uses log1p heights
    (activation histograms are dominated by the bin around zero)."""
    n = len(counts)
    if n == 0 or len(edges) != n + 1:
        return "<i>(no histogram)</i>"
    hs = [math.log1p(c) if log else float(c) for c in counts]
    top = max(hs) or 1.0
    bw = width / n
    bars = []
    for i, (c, h) in enumerate(zip(counts, hs)):
        bh = (height - 14) * h / top
        tip = esc(f"[{edges[i]:.3g}, {edges[i + 1]:.3g}): {c:g}")
        bars.append(f"<rect x='{i * bw:.2f}' y='{height - 14 - bh:.2f}' width='{max(bw - 0.5, 0.5):.2f}' "
                    f"height='{bh:.2f}'><title>{tip}</title></rect>")
    lo, hi = esc(f"{edges[0]:.3g}"), esc(f"{edges[-1]:.3g}")
    zero = ""
    if edges[0] < 0 < edges[-1]:
        zx = width * (0 - edges[0]) / (edges[-1] - edges[0])
        zero = f"<line x1='{zx:.1f}' x2='{zx:.1f}' y1='0' y2='{height - 14}' class='zero'/>"
    return (f"<svg class='cb-hist' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
            f"role='img' aria-label='{esc(title or 'histogram')}'>{''.join(bars)}{zero}"
            f"<text x='0' y='{height - 2}'>{lo}</text>"
            f"<text x='{width}' y='{height - 2}' text-anchor='end'>{hi}</text>"
            f"<text x='{width / 2}' y='{height - 2}' text-anchor='middle'>{'log count' if log else 'count'}"
            f"</text></svg>")


def heatmap_svg(tokens: Sequence[str], pattern: Sequence[Sequence[float]], cell: int = 14,
                title: str = "") -> str:
    """Attention pattern [q_pos, k_pos] (rows = queries, columns = keys) as an SVG heat map, tokens on
    both axes, weight on hover."""
    n = len(pattern)
    if n == 0:
        return "<i>(no pattern)</i>"
    m = max(len(r) for r in pattern)
    lab = 90
    w, h = lab + m * cell, lab + n * cell
    parts = [f"<svg class='cb-heat' width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img' "
             f"aria-label='{esc(title or 'attention pattern')}'>"]
    for q, row in enumerate(pattern):
        tq = tokens[q] if q < len(tokens) else str(q)
        parts.append(f"<text x='{lab - 3}' y='{lab + q * cell + cell - 3}' text-anchor='end'>"
                     f"{show_token(tq[:12])}</text>")
        for k, v in enumerate(row):
            if v is None or not math.isfinite(v) or v <= 0:
                continue
            tk = tokens[k] if k < len(tokens) else str(k)
            tip = esc(f"{tq!r} -> {tk!r}: {v:.3f}")
            parts.append(f"<rect x='{lab + k * cell}' y='{lab + q * cell}' width='{cell}' height='{cell}' "
                         f"fill='rgba(200,40,40,{min(1.0, v):.3f})'><title>{tip}</title></rect>")
    for k in range(m):
        tk = tokens[k] if k < len(tokens) else str(k)
        x = lab + k * cell + cell - 3
        parts.append(f"<text x='{x}' y='{lab - 3}' transform='rotate(-60 {x} {lab - 3})'>"
                     f"{show_token(tk[:12])}</text>")
    return "".join(parts) + "</svg>"


def attention_rows_svg(rows: Sequence[tuple[Sequence[str], Sequence[float], int]], cell_w: int = 44,
                       cell_h: int = 16, title: str = "") -> str:
    """Attention on examples as a heat map: one row per example, the query (focus) token in the right-most
    column and its keys to the left, aligned by offset (query - key); shade = attention weight, token
    text in the cell, exact weight on hover. rows: (token strings [w], attention [w] from the query to
    each window token (NaN / None after the query), focus index)."""
    rows = [r for r in rows if 0 <= r[2] < len(r[0])]
    if not rows:
        return "<i>(no examples)</i>"
    span = max(r[2] for r in rows) + 1  # columns: offsets span-1 .. 0
    lab = 30
    w, h = lab + span * cell_w, 14 + len(rows) * cell_h
    out = [f"<svg class='cb-attn' width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img' "
           f"aria-label='{esc(title or 'attention on examples')}'>"]
    for c in range(span):
        off = span - 1 - c
        out.append(f"<text x='{lab + c * cell_w + cell_w / 2}' y='10' text-anchor='middle' class='axis'>"
                   f"{'q' if off == 0 else '-' + str(off)}</text>")
    for i, (toks, att, focus) in enumerate(rows):
        y = 14 + i * cell_h
        out.append(f"<text x='{lab - 4}' y='{y + cell_h - 4}' text-anchor='end' class='axis'>{i + 1}</text>")
        for k in range(focus + 1):
            x = lab + (span - 1 - (focus - k)) * cell_w
            a = att[k] if k < len(att) else None
            a = a if a is not None and math.isfinite(a) else 0.0
            tip = esc(f"{toks[focus]!r} -> {toks[k]!r} (offset {focus - k}): {a:.3f}")
            stroke = " stroke='#333'" if k == focus else ""
            out.append(f"<g><title>{tip}</title><rect x='{x}' y='{y}' width='{cell_w - 1}' height='{cell_h - 1}' "
                       f"fill='rgba(200,40,40,{min(1.0, max(0.0, a)):.3f})'{stroke}/>"
                       f"<text x='{x + 2}' y='{y + cell_h - 4}'>{show_token(toks[k][:7])}</text></g>")
    return "".join(out) + "</svg>"


def bars_html(rows: Iterable[tuple[str, float]], title: str = "", sign: bool = True) -> str:
    """A two-column table of (token or name, value) with a proportional bar; strings are escaped."""
    rows = list(rows)
    if not rows:
        return ""
    scale = max((abs(v) for _, v in rows if isinstance(v, (int, float)) and math.isfinite(v)), default=0) or 1
    out = [f"<table class='cb-bars'>{f'<caption>{esc(title)}</caption>' if title else ''}"]
    for name, v in rows:
        pct = 100 * abs(v) / scale if isinstance(v, (int, float)) and math.isfinite(v) else 0
        cls = "neg" if sign and isinstance(v, (int, float)) and v < 0 else "pos"
        out.append(f"<tr><td class='tokcell'>{show_token(name)}</td><td class='num'>{fmt(v)}</td>"
                   f"<td class='barcell'><span class='bar {cls}' style='width:{pct:.1f}%'></span></td></tr>")
    return "".join(out) + "</table>"


def table_html(rows: Sequence[dict], ctx: Ctx | None = None, max_rows: int = 200) -> str:
    """Rows of dicts (same keys) as a table; cells rendered by :func:`value_html`."""
    if not rows:
        return "<i>(none)</i>"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    out = ["<table class='cb-table'><tr>", *(f"<th>{esc(c)}</th>" for c in cols), "</tr>"]
    for r in rows[:max_rows]:
        out.append("<tr>" + "".join(f"<td>{value_html(r.get(c, ''), ctx, depth=2)}</td>" for c in cols) + "</tr>")
    if len(rows) > max_rows:
        out.append(f"<tr><td colspan='{len(cols)}'><i>... {len(rows) - max_rows} more</i></td></tr>")
    return "".join(out) + "</table>"


# ------------------------------------------------------------------ shape recognisers
_TOKEN_KEYS = ("tokens", "token_strs", "strs", "text_tokens")
_ID_KEYS = ("token_ids", "ids")
_ACT_KEYS = ("acts", "activations", "values", "act")


def _first(d: dict, keys: Sequence[str]):
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def example_parts(ex: Any, ctx: Ctx | None) -> tuple[list[str], list[float] | None] | None:
    """(token strings, activations) if ``ex`` looks like one example (a dict with tokens or ids and
    optionally per-token activations), else None."""
    if dataclasses.is_dataclass(ex) and not isinstance(ex, type):
        ex = dataclasses.asdict(ex)
    if not isinstance(ex, dict):
        return None
    toks = _first(ex, _TOKEN_KEYS)
    if toks is None:
        ids = _first(ex, _ID_KEYS)
        if not isinstance(ids, (list, tuple)):
            return None
        ctx = ctx or Ctx()
        toks = [ctx.tok(int(i)) for i in ids]
    if not isinstance(toks, (list, tuple)) or not all(isinstance(t, str) for t in toks):
        return None
    acts = _first(ex, _ACT_KEYS)
    if not (isinstance(acts, (list, tuple)) and len(acts) == len(toks)):
        acts = None
    return list(toks), (None if acts is None else [float(a) for a in acts])


def examples_html(examples: Sequence[Any], ctx: Ctx | None = None, scale: float | None = None,
                  max_rows: int = 64) -> str:
    """Examples (dicts with tokens/ids and acts) as highlighted texts, one per row, with their max act and
    the other fields (story, position...) as small print. One colour scale for the whole list so
    examples compare."""
    parsed = [(ex, example_parts(ex, ctx)) for ex in examples[:max_rows]]
    if scale is None:
        scale = max((abs(a) for _, p in parsed if p and p[1] for a in p[1] if math.isfinite(a)), default=0.0)
    out = ["<div class='cb-examples'>"]
    for ex, p in parsed:
        if p is None:
            out.append(f"<div class='ex'>{value_html(ex, ctx, depth=2)}</div>")
            continue
        toks, acts = p
        d = dataclasses.asdict(ex) if dataclasses.is_dataclass(ex) else ex
        mark = d.get("pos") if isinstance(d.get("pos"), int) else None
        if mark is None and acts:
            mark = max(range(len(acts)), key=lambda i: acts[i])
        extra = {k: v for k, v in d.items()
                 if k not in _TOKEN_KEYS + _ID_KEYS + _ACT_KEYS and not isinstance(v, (list, tuple, dict))}
        meta = " ".join(f"{esc(k)}={fmt(v)}" for k, v in extra.items())
        out.append(f"<div class='ex'><span class='exmeta'>{meta}</span> "
                   f"{tokens_html(toks, acts, scale, mark)}</div>")
    if len(examples) > max_rows:
        out.append(f"<div class='ex'><i>... {len(examples) - max_rows} more</i></div>")
    return "".join(out) + "</div>"


def _pairs(v: Any, ctx: Ctx | None) -> list[tuple[str, float]] | None:
    """A list of (token, value): [[tok, v], ...] or [{'token'|'str'|'token_id': ..., 'value'|...: v}]."""
    if not isinstance(v, (list, tuple)) or not v:
        return None
    out = []
    for r in v:
        if isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[1], (int, float)) \
                and isinstance(r[0], (str, int)) and not isinstance(r[1], bool):
            out.append(((ctx or Ctx()).tok(r[0]), float(r[1])))
        elif isinstance(r, dict) and 2 <= len(r) <= 3:
            name = _first(r, ("token", "str", "token_str", "name"))
            if name is None and "token_id" in r:
                name = (ctx or Ctx()).tok(int(r["token_id"]))
            val = _first(r, ("value", "score", "logit", "effect", "weight", "act"))
            if name is None or not isinstance(val, (int, float)):
                return None
            out.append((str(name), float(val)))
        else:
            return None
    return out


def _hist(v: Any) -> tuple[list[float], list[float]] | None:
    if isinstance(v, dict):
        edges, counts = _first(v, ("edges", "bin_edges", "bins")), _first(v, ("counts", "hist", "count"))
        if isinstance(edges, (list, tuple)) and isinstance(counts, (list, tuple)) and len(edges) == len(counts) + 1:
            return list(edges), list(counts)
    return None


def _unit_ref(v: Any) -> tuple[str, int, int] | None:
    """A reference to another unit: {'kind': a registered unit kind, 'layer', 'idx'|'index'|<the kind's name>}."""
    if isinstance(v, dict) and v.get("kind") in kind_names() and isinstance(v.get("layer"), int):
        idx = _first(v, ("idx", "index", v["kind"]))
        if isinstance(idx, int):
            return v["kind"], v["layer"], idx
    return None


def value_html(v: Any, ctx: Ctx | None = None, depth: int = 0) -> str:
    """Any section value as HTML, recognising examples, histograms, (token, value) lists and tables."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        v = dataclasses.asdict(v)
    if hasattr(v, "tolist"):  # numpy / torch
        v = v.tolist()
    if isinstance(v, dict):
        h = _hist(v)
        if h is not None:
            return histogram_svg(*h)
        if example_parts(v, ctx) is not None:
            return examples_html([v], ctx)
        ref = _unit_ref(v)
        if ref is not None and depth > 0:
            rest = {k: x for k, x in v.items() if k not in ("kind", "layer", "idx", "index", v["kind"])}
            return (ctx or Ctx()).unit_link(*ref) + (" " + value_html(rest, ctx, depth + 1) if rest else "")
        if not v:
            return "<i>(empty)</i>"
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{value_html(x, ctx, depth + 1)}</td></tr>" for k, x in v.items())
        return f"<table class='cb-kv'>{rows}</table>"
    if isinstance(v, (list, tuple)):
        if not v:
            return "<i>(none)</i>"
        if any(example_parts(x, ctx) is not None for x in v[:3]):
            return examples_html(v, ctx)
        p = _pairs(v, ctx)
        if p is not None:
            return bars_html(p)
        if all(isinstance(x, dict) for x in v):
            return table_html(v, ctx)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            s = ", ".join(fmt(x) for x in v[:32])
            return f"<span class='nums'>[{s}{', ...' if len(v) > 32 else ''}]</span>"
        return "<ul>" + "".join(f"<li>{value_html(x, ctx, depth + 1)}</li>" for x in v[:100]) + "</ul>"
    if isinstance(v, str):
        return f"<span class='str'>{esc(v)}</span>"
    return fmt(v)


# ------------------------------------------------------------------ bespoke section views
def pairs_html(rows: Sequence[Sequence[Any]], heads: Sequence[str], title: str = "") -> str:
    """Rows of (token, token, ..., value) as a table: token cells shown as tokens, the last as a number."""
    if not rows:
        return ""
    out = [f"<table class='cb-table cb-pairs'>{f'<caption>{esc(title)}</caption>' if title else ''}<tr>"]
    out += [f"<th>{esc(h)}</th>" for h in heads] + ["</tr>"]
    for r in rows:
        *toks, v = r
        out.append("<tr>" + "".join(f"<td class='tokcell'><code>{show_token(str(t))}</code></td>" for t in toks)
                   + f"<td class='num'>{fmt(v)}</td></tr>")
    return "".join(out) + "</table>"


# ------------------------------------------------------------------ sections and units
SECTION_TITLES = {"scan": "Activations", "circuits": "Weights-based circuits", "typing": "Typing",
                  "handcraft": "Handcrafted evaluation"}


def section_html(name: str, sec: Any, ctx: Ctx | None = None) -> str:
    """One section in its component's registered renderer (book.core.section_renderer), else value_html."""
    from .core import section_renderer

    ctx = ctx or Ctx()
    body = None
    fn = section_renderer(name)
    if fn is not None:
        try:
            body = fn(sec, ctx)
        except Exception as e:  # a renderer that cannot read this section must not take the page down
            body = f"<p class='error'>({esc(name)} view failed: {esc(type(e).__name__)}: {esc(e)})</p>"
            body += value_html(sec, ctx)
    if body is None:
        body = value_html(sec, ctx)
    title = SECTION_TITLES.get(name, name)
    return f"<section class='cb-section' id='sec-{esc(name)}'><h2>{esc(title)}</h2>{body}</section>"


SECTION_ORDER = ("scan", "circuits", "typing", "handcraft")  # then any other component, in registration order


def attention_section_html(sec: Any, ctx: Ctx) -> str:
    """A head's attention on its top examples as a heat map, from the scan section's stored windows
    (``ScanSection.top``: examples with token ids, attention from the focus query, focus index)."""
    rows = []
    for ex in getattr(sec, "top", [])[:24]:
        toks = ["" if t < 0 else ctx.tok(int(t)) for t in ex.tokens]
        rows.append((toks, ex.values, ex.focus))
    if not rows:
        return ""
    return ("<section class='cb-section' id='sec-attention'><h2>Attention patterns on top examples</h2>"
            "<p class='hint'>Each row is one example: the query token (right, outlined) and the keys before it; "
            "red = attention weight (hover for the value).</p>"
            f"<div class='attn-wrap'>{attention_rows_svg(rows)}</div></section>")


def unit_sections_html(unit, ctx: Ctx | None = None) -> list[str]:
    """Every section of a unit as HTML, in SECTION_ORDER; units whose kind has attention statistics (heads)
    and scan data get the attention heat map first."""
    ctx = ctx or Ctx()
    order = {n: i for i, n in enumerate(SECTION_ORDER)}
    names = sorted(unit.sections, key=lambda n: order.get(n, len(order)))
    out = []
    if unit_kind(unit.kind).stats == "attention" and "scan" in unit.sections:
        out.append(attention_section_html(unit.sections["scan"], ctx))
    return out + [section_html(n, unit.sections[n], ctx) for n in names]


def unit_html(unit, ctx: Ctx | None = None) -> str:
    """A whole unit (label, notes, status and every section) as one self-contained fragment."""
    ctx = ctx or Ctx()
    head = (f"<h1>{esc(unit.kind)} {esc(unit.key)}"
            f"{' — ' + esc(unit.label) if unit.label else ''} <small>[{esc(unit.status)}]</small></h1>")
    notes = f"<p class='notes'>{esc(unit.notes)}</p>" if unit.notes else ""
    secs = "".join(unit_sections_html(unit, ctx))
    return f"<div class='cb-unit'>{STYLE}{head}{notes}{secs or '<p><i>No findings in the book yet.</i></p>'}</div>"


# Minimal CSS so fragments read well inside a notebook (the web pages add their own stylesheet).
STYLE = """<style>
.cb-unit{font-family:system-ui,sans-serif;font-size:13px}
.cb-text{font-family:ui-monospace,monospace;white-space:pre-wrap}
.cb-text .tok{border-radius:2px}.cb-text .tok.mark{outline:1px solid #333}
.cb-hist rect{fill:#4a7bd0}.cb-hist text,.cb-heat text,.cb-attn text{font-size:9px;font-family:monospace}
.cb-hist .zero{stroke:#999;stroke-dasharray:2}
.cb-bars td.num{text-align:right;font-family:monospace}.cb-bars .barcell{width:120px}
.cb-bars .bar{display:inline-block;height:8px;background:#e8903a}.cb-bars .bar.neg{background:#4a7bd0}
.cb-examples .ex{margin:2px 0;border-bottom:1px solid #eee}.cb-examples .exmeta{color:#888;font-size:10px}
.cb-kv th{text-align:left;vertical-align:top;color:#555}.cb-table td,.cb-table th{padding:1px 6px}
.cb-attn .axis{fill:#888}.attn-wrap{overflow-x:auto}.cb-pairs{display:inline-table;vertical-align:top;margin-right:16px}
.hint{color:#777;font-size:12px}
</style>"""


class View:
    """Something that renders inline in Jupyter (``_repr_html_``) and as a string (``.html``)."""

    def __init__(self, html_text: str):
        self.html = html_text

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def view(book, kind: str, layer: int, idx: int, link: Link | None = None) -> View:
    """A unit's full view for a notebook: ``view(book, "neuron", 0, 896)`` as the last line of a cell."""
    unit = book.unit(kind, layer, idx)
    return View(unit_html(unit, Ctx(link=link, token_strs=book.token_strs() or None)))
