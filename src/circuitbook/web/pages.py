"""Page rendering shared by the server (``app.py``) and the static export (``export.py``).

A :class:`Site` renders whole pages from the book: the same templates and fragments serve both, only
the links differ (``/neuron/0/5`` on the server, ``neuron/0/5.html`` relative in the export) and the
export has no editing forms or prompt page. Templates autoescape everything; the only markup that
enters unescaped is built by ``circuitbook.book.render`` (which escapes every string it interpolates)
and is wrapped in ``Markup`` here, at the one place it crosses into the templates.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ..book import STATUSES, Book, BookError
from ..book import render
from ..errors import CircuitbookError
from ..units import UnitError, kind_names, unit_kind, unit_kinds
from .index import LABEL_FILTERS, Row, filter_rows, index_rows
from .links import node_url, saved_graph_url, unit_url

_INT = re.compile(r"^[0-9]{1,9}$")


class NotFound(CircuitbookError, LookupError):
    """A page that does not exist (bad kind, layer or index): the server answers 404 with this message."""


def parse_unit(kind: str, layer: str | int, idx: str | int, cfg: dict | None) -> tuple[str, int, int]:
    """Validate a unit address from a URL: a registered unit kind, layer and idx non-negative ints in range."""
    try:
        spec = unit_kind(kind)
    except UnitError:
        raise NotFound(f"no such unit kind {kind!r} (expected one of {', '.join(map(repr, kind_names()))})") from None
    for name, v in (("layer", layer), ("index", idx)):
        if not _INT.match(str(v)):
            raise NotFound(f"{kind} {name} must be a non-negative integer, not {str(v)[:40]!r}")
    layer, idx = int(layer), int(idx)
    if cfg is not None:
        n_layers = spec.layers(cfg)
        if layer >= n_layers:
            raise NotFound(f"no layer {layer}: the model has {n_layers} layer(s) (0..{n_layers - 1})")
        size = spec.count(cfg, layer)
        if idx >= size:
            raise NotFound(f"no {kind} {idx} in layer {layer}: the model has {size} {spec.title}s per layer "
                           f"(0..{size - 1})")
    return kind, layer, idx


def saved_graph_rows(book: Book) -> list[dict]:
    """The book's saved graphs for the index, each with its page's URL (``links.saved_graph_url``)."""
    from ..book.graphs import saved_graphs

    return [{**r, "url": saved_graph_url(r["name"])} for r in saved_graphs(book)]


class Site:
    """Renders pages for one book. ``static=True`` renders for the static export (relative links,
    read-only). ``model`` (optional) enables the prompt page."""

    def __init__(self, book: Book, static: bool = False, model=None, title: str | None = None):
        self.book = book
        self.static = static
        self.model = model
        self.title = title or book.path.name
        self.env = Environment(loader=PackageLoader("circuitbook.web", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters["tok"] = lambda t: json.dumps(str(t), ensure_ascii=False)  # quoted; autoescaped after
        self.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t or 0))
        self._rows: list[Row] | None = None

    # ------------------------------------------------------------------ links
    def root(self, depth: int) -> str:
        return "../" * depth if self.static else "/"

    def unit_url(self, kind: str, layer: int, idx: int, depth: int = 0) -> str:
        return unit_url(kind, layer, idx, self.root(depth), self.static)

    @property
    def kinds(self) -> list[tuple[str, str]]:
        """(name, title) of every registered unit kind, for the index's kind filter."""
        return [(k.name, k.title) for k in unit_kinds()]

    @property
    def kinds_label(self) -> str:
        """The index filter's "every kind" option: "neurons + heads" (+ any registered kind)."""
        return " + ".join(f"{title}s" for _, title in self.kinds)

    def index_url(self, depth: int = 0) -> str:
        return self.root(depth) + ("index.html" if self.static else "")

    def static_url(self, name: str, depth: int = 0) -> str:
        return f"{self.root(depth)}static/{name}"

    def ctx(self, depth: int) -> render.Ctx:
        return render.Ctx(link=lambda k, l, i: self.unit_url(k, l, i, depth), token_strs=self.book.token_strs() or None)

    def _page(self, template: str, depth: int, **kw) -> str:
        return self.env.get_template(template).render(
            site=self, depth=depth, static=self.static, book_name=self.title,
            style=self.static_url("style.css", depth), script=self.static_url("app.js", depth),
            home=self.index_url(depth), has_model=self.model is not None and not self.static, **kw)

    # ------------------------------------------------------------------ index
    def rows(self, fresh: bool = True) -> list[Row]:
        if fresh or self._rows is None:
            self._rows = index_rows(self.book)
        return self._rows

    def index_page(self, q: str = "", kind: str = "", layer: str = "", type: str = "", cls: str = "",
                   label: str = "any", concept: str = "", limit: int = 500, offset: int = 0) -> str:
        rows = self.rows(fresh=not self.static)
        if kind and kind not in kind_names():
            raise NotFound(f"no such unit kind {kind!r}")
        if label not in LABEL_FILTERS and label:
            raise NotFound(f"label filter must be one of {LABEL_FILTERS}")
        lay = int(layer) if _INT.match(layer or "") else None
        shown = filter_rows(rows, q=q, kind=kind, layer=lay, type=type, cls=cls, label=label or "any")
        concept_error = None
        try:
            concept_hits = self.concept_hits(concept) if concept and not self.static else None
        except CircuitbookError as e:
            concept_hits, concept_error = [], str(e)
        if concept_hits is not None:
            order = {k: i for i, (k, _) in enumerate(concept_hits)}
            score = dict(concept_hits)
            shown = sorted((r for r in shown if (r.kind, r.layer, r.idx) in order),
                           key=lambda r: order[(r.kind, r.layer, r.idx)])
            for r in shown:
                r.stats = {"concept": score[(r.kind, r.layer, r.idx)], **r.stats}
        total = len(shown)
        if not self.static:
            shown = shown[offset: offset + limit]
        stat_cols: list[str] = []
        for r in shown:
            stat_cols += [c for c in r.stats if c not in stat_cols]
        cfg = self.book.config or {}
        return self._page(
            "index.html", 0, rows=shown, total=total, n_units=len(rows), stat_cols=stat_cols, offset=offset,
            limit=limit, q=q, kind=kind, layer=layer, type=type, cls=cls, label=label or "any", concept=concept,
            layers=list(range(cfg.get("n_layers", 0))), types=sorted({r.type for r in rows if r.type}),
            classes=sorted({r.cls for r in rows if r.cls}), label_filters=LABEL_FILTERS,
            has_concepts=self.concept_search_available() and not self.static, cfg=cfg,
            n_labelled=sum(1 for r in rows if r.label), concept_error=concept_error, coverage=self._coverage(),
            saved_graphs=[] if self.static else saved_graph_rows(self.book))

    def _coverage(self) -> dict | None:
        """The handcraft stage's latest coverage run (headline numbers), when the book has one."""
        if "handcraft" not in self.book.schema_versions():
            return None
        from ..book import handcraft

        c = handcraft.latest_coverage(self.book)
        return None if c is None else {k: c.get(k) for k in ("mode", "n_tokens", "recovered", "n_units", "ce_original",
                                                              "ce_ablated", "ce_kept")}

    def concept_search_available(self) -> bool:
        return _concept_search(self) is not None

    def concept_hits(self, concept: str) -> list[tuple[tuple[str, int, int], float]] | None:
        """The typing stage's concept search as [((kind, layer, idx), score)], best first."""
        fn = _concept_search(self)
        if fn is None:
            return None
        out = []
        for h in fn(concept):
            if isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], tuple):
                out.append((tuple(h[0]), float(h[1])))
                continue
            get = h.get if isinstance(h, dict) else lambda k, d=None, h=h: getattr(h, k, d)
            score = next((get(k) for k in ("score", "similarity", "value") if get(k) is not None), 0.0)
            out.append(((get("kind", "neuron"), int(get("layer")), int(get("idx"))), float(score)))
        return out

    # ------------------------------------------------------------------ unit pages
    def unit_page(self, kind: str, layer: Any, idx: Any) -> str:
        kind, layer, idx = parse_unit(kind, layer, idx, self.book.unit_context())
        try:
            unit = self.book.unit(kind, layer, idx)
        except BookError as e:
            raise NotFound(str(e)) from None
        ctx = self.ctx(2)
        sections = [Markup(h) for h in render.unit_sections_html(unit, ctx)]
        history = [] if self.static else self.book.label_history(kind, layer, idx)[-20:][::-1]
        cfg = self.book.unit_context()
        size = unit_kind(kind).count(cfg, layer) if cfg is not None else None
        prev_url = self.unit_url(kind, layer, idx - 1, 2) if idx > 0 else None
        next_url = self.unit_url(kind, layer, idx + 1, 2) if size is None or idx + 1 < size else None
        return self._page("unit.html", 2, unit=unit, sections=sections, statuses=STATUSES, history=history,
                          prev_url=prev_url, next_url=next_url,
                          api=f"/api/unit/{kind}/{layer}/{idx}")

    # ------------------------------------------------------------------ prompt page
    def prompt_page(self, q, runner) -> tuple[str, int]:
        """(HTML, status) of the prompt page for query ``q`` (a ``prompt.PromptQuery``); bad input (a
        target that is not one token, a position outside the prompt...) shows on the page with 400."""
        from urllib.parse import urlencode

        from ..graph import to_svg

        graph = preds = ablation = None
        error, status = None, 200
        if q.text:
            try:
                q.check()
                preds = runner.predictions(q)
                graph = runner.graph(q)
                if q.ablate:
                    ablation = runner.ablation(q, graph.target, graph.pos)
            except CircuitbookError as e:
                error, status = str(e), 400
        svg = Markup(to_svg(graph, link=node_url)) if graph is not None else None
        base = q.params(ablate=())
        return self._page(
            "prompt.html", 0, q=q, graph=graph, preds=preds, ablation=ablation, error=error, svg=svg, node_url=node_url,
            query=urlencode(q.params()), query_no_ablate=urlencode(base),
            base_params=[(k, v) for k, v in base if k != "mode"],
            pred_link=lambda pos, tid: urlencode(q.params(pos=pos, target_id=tid, target="", ablate=())),
        ), status

    # ------------------------------------------------------------------ errors
    def error_page(self, status: int, message: str) -> str:
        return self._page("error.html", 0, status=status, message=message)


def _concept_search(site: "Site"):
    """fn(words) -> hits from the typing stage, or None when it cannot run here: the book's own
    ``book.roles.concept_search(book, words)`` if the stage provides one, else (with a model loaded)
    ``roles.concepts.concept_search(model, words, token_means=<the book's per-token means>)``."""
    try:
        from ..book import roles as bt
    except ImportError:
        return None
    if hasattr(bt, "concept_search"):
        return lambda words: bt.concept_search(site.book, words)
    if site.model is None or site.static:
        return None
    try:
        from ..roles.concepts import concept_search
    except ImportError:
        return None
    if getattr(site, "_token_acts", None) is None:  # [n_units, N] means: read once, reused by every search
        site._token_acts = (bt.token_acts(site.book) if "typing" in site.book.schema_versions() else None) or ()
    acts = site._token_acts
    if not acts or acts[2] is None:
        return None  # without the typing run's per-token means there is no cheap input side to score
    return lambda words: concept_search(site.model, words, token_means=acts).hits
