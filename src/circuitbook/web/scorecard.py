"""The scorecard page (``GET /scorecard``): how much of the model the book's explanations explain.

Three parts, all read from ``book/explanations.py``: the distribution of simulation scores (histogram),
the scorecard runs over time (loss recovered per run, and the latest run's units-vs-recovered curve), and
the **work queue**: units sorted by (loss the unit carries) x (1 - its simulation score), what to study
next. ``register(app, book)`` adds the route; every string from the book is escaped.
"""

from __future__ import annotations

import datetime
import html

from fastapi.responses import HTMLResponse

from ..book import explanations as be
from ..units import unit_kind


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def histogram_svg(values: list[float], bins: int = 20, lo: float = -0.2, hi: float = 1.0, w: int = 420,
                  h: int = 120) -> str:
    counts = [0] * bins
    for v in values:
        b = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
        counts[b] += 1
    top = max(counts) or 1
    bw = w / bins
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{h - 20 - c / top * (h - 30):.1f}' width='{bw - 1:.1f}' "
                   f"height='{c / top * (h - 30):.1f}' fill='#4a7'><title>{lo + i * (hi - lo) / bins:.2f}: {c}</title></rect>"
                   for i, c in enumerate(counts))
    axis = f"<text x='0' y='{h - 4}' font-size='10'>{lo}</text><text x='{w - 20}' y='{h - 4}' font-size='10'>{hi}</text>"
    return f"<svg class='hist' width='{w}' height='{h}' role='img' aria-label='simulation scores'>{bars}{axis}</svg>"


def line_svg(points: list[tuple[float, float]], w: int = 420, h: int = 140, xlabel: str = "") -> str:
    pts = [(x, y) for x, y in points if y is not None]
    if not pts:
        return "<p>no points yet</p>"
    xs = [x for x, _ in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    sx = lambda x: 10 + (x - x0) / (x1 - x0) * (w - 20)  # noqa: E731
    sy = lambda y: h - 20 - max(0.0, min(1.0, y)) * (h - 30)  # noqa: E731
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3'><title>{x:g}: {y:.3f}</title></circle>"
                   for x, y in pts)
    return (f"<svg class='curve' width='{w}' height='{h}' role='img'><polyline points='{path}' fill='none' "
            f"stroke='#36c'/>{dots}<text x='10' y='{h - 4}' font-size='10'>{_esc(xlabel)}</text></svg>")


def work_queue(rows: list[dict], n: int = 50) -> list[dict]:
    """Scored units by carry x (1 - simulation score), largest first (unscored units last)."""
    def pri(r):
        c, s = r.get("carry"), r.get("simulation")
        if c is None:
            return -1.0
        return c * (1.0 - max(0.0, min(1.0, s or 0.0)))
    return sorted(rows, key=lambda r: -pri(r))[:n]


def page(book) -> str:
    rows = be.scored_units(book)
    sims = [r["simulation"] for r in rows if r["simulation"] is not None]
    cards = be.scorecards(book)
    parts = [f"<h1>Scorecard · {_esc(book.path.name)}</h1>"]
    if cards:
        c = cards[-1]
        parts.append(f"<p id='headline'>latest run: <b>{_f(c['recovered'])}</b> of the loss recovered with "
                     f"{c['n_explained']} of {c['n_units']} units explained (original {_f(c['ce_original'], 4)}, "
                     f"all ablated {_f(c['ce_ablated'], 4)}, explained {_f(c['ce_explained'], 4)} nats/token)</p>")
        parts.append("<h2>Over time</h2>" + line_svg([(i + 1, k["recovered"]) for i, k in enumerate(cards)],
                                                     xlabel="scorecard run"))
        parts.append("<h2>Units explained vs loss recovered (latest run)</h2>"
                     + line_svg([(p["n"], p["recovered"]) for p in c["curve"]], xlabel="units explained"))
        parts.append("<table class='groups'><tr><th>by</th><th>group</th><th>units</th><th>recovered</th></tr>" + "".join(
            f"<tr><td>{_esc(g['by'])}</td><td>{_esc(g['group'])}</td><td>{g['n_units']}</td><td>{_f(g['recovered'])}</td></tr>"
            for g in c["groups"]) + "</table>")
        parts.append("<h3>Runs</h3><ul>" + "".join(
            f"<li>{datetime.datetime.fromtimestamp(k['at']).isoformat(timespec='minutes')}: {_f(k['recovered'])} "
            f"({k['n_explained']} units; {_esc(k['corpus'] or '')})</li>" for k in cards) + "</ul>")
    else:
        parts.append("<p id='headline'>no scorecard yet: run <code>circuitbook scorecard BOOK --corpus HELD_OUT</code></p>")
    parts.append(f"<h2>Simulation scores ({len(sims)} scored of {len(rows)} explained)</h2>")
    if sims:
        srt = sorted(sims)
        med = srt[len(srt) // 2]
        parts.append(f"<p>median {med:.3f} · top decile ≥ {srt[int(0.9 * (len(srt) - 1))]:.3f}</p>" + histogram_svg(sims))
    parts.append("<h2>Work queue: loss carried × (1 − score)</h2><table id='queue'><tr><th>unit</th><th>carry</th>"
                 "<th>simulation</th><th>ablation</th><th>author</th><th>explanation</th></tr>")
    for r in work_queue(rows):
        key = unit_kind(r["kind"]).key(r["layer"], r["idx"])
        url = f"/{r['kind']}/{r['layer']}/{r['idx']}"
        parts.append(f"<tr><td><a href='{_esc(url)}'>{_esc(key)}</a></td><td>{_f(r['carry'], 4)}</td>"
                     f"<td>{_f(r['simulation'])}</td><td>{_f(r['ablation'])}</td><td>{_esc(r['author'])}</td>"
                     f"<td>{_esc(r['sentence'][:160])}</td></tr>")
    parts.append("</table>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>scorecard · circuitbook</title>"
            "<link rel='stylesheet' href='/static/style.css'></head><body><nav class='top'><a class='brand' href='/'>"
            "circuitbook</a> <a href='/scorecard'>scorecard</a></nav><main>" + "".join(parts) + "</main></body></html>")


def register(app, book) -> None:
    @app.get("/scorecard", response_class=HTMLResponse)
    def scorecard_page():
        return page(book)
