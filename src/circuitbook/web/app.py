"""The FastAPI app behind ``circuitbook serve``.

Routes (all pages are server-rendered HTML; the JSON API is what the pages' JavaScript calls):

    GET  /                              index (query: q, kind, layer, type, cls, label, concept, offset)
    GET  /neuron/{layer}/{idx}          neuron page        GET /head/{layer}/{idx}   head page
    GET  /go?unit=N0.896                jump to a unit
    GET  /scorecard                     explanations' scores, scorecard runs and the work queue (web/scorecard.py)
    GET  /prompt?text=&target=&pos=&ablate=   prompt page (needs a model)
    GET  /api/unit/{kind}/{layer}/{idx}             label, notes, status as JSON
    POST /api/unit/{kind}/{layer}/{idx}/label       set label / notes / status (JSON body or a form post)
    GET  /api/graph.json, /api/graph.svg            the prompt page's attribution graph as a file
    POST /api/graphs/save, GET /graph/{name}, POST /graph/{name}/...   saved graphs (see web/saved.py)
    GET  /static/{name}                 the stylesheet and script shipped with the package (a fixed list)

Safety: the CLI binds 127.0.0.1 unless told otherwise, and while bound to loopback the app answers
only requests addressed to a loopback host name (a page elsewhere cannot reach it by DNS rebinding);
writes refuse a cross-origin ``Origin``; path parameters are validated (bad kind / layer / index ->
404 naming the problem); no route maps a URL onto the file system.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..book import Book
from ..errors import CircuitbookError
from ..units import UnitError
from ..units import parse_unit as parse_unit_text
from .links import linked_json, node_url
from .pages import NotFound, Site, parse_unit
from .prompt import PromptQuery, PromptRunner

STATIC_FILES = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
MAX_LABEL, MAX_NOTES = 500, 20000


def _static_bytes() -> dict[str, bytes]:
    base = resources.files("circuitbook.web") / "static"
    return {name: (base / name).read_bytes() for name in STATIC_FILES}


def _hostname(host_header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '[::1]', 'localhost' -> 'localhost'."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0]


def create_app(book: Book | str | Path, model=None, loopback_only: bool = True) -> FastAPI:
    """The app for one book (a path or an open Book). ``model`` enables the prompt page.
    ``loopback_only``: answer only requests whose Host is 127.0.0.1 / localhost / [::1]."""
    if not isinstance(book, Book):
        book = Book.open(book, create=False)
    site = Site(book, model=model)
    static = _static_bytes()
    runner = PromptRunner(model, book) if model is not None else None
    app = FastAPI(title="circuitbook", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.site = site

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = _hostname(request.headers.get("host") or "")
        if loopback_only and host not in LOOPBACK_HOSTS:
            return JSONResponse({"detail": f"host {host!r} not allowed (server is bound to loopback)"}, 421)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"detail": "cross-origin write refused"}, 403)
        return await call_next(request)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, 404)
        return HTMLResponse(site.error_page(404, str(exc)), 404)

    @app.exception_handler(CircuitbookError)
    async def bad_input(request: Request, exc: CircuitbookError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, 400)
        return HTMLResponse(site.error_page(400, str(exc)), 400)

    @app.exception_handler(404)
    async def no_route(request: Request, exc):
        msg = f"no page at {request.url.path!r}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": msg}, 404)
        return HTMLResponse(site.error_page(404, msg), 404)

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def index(q: str = "", kind: str = "", layer: str = "", type: str = "", cls: str = "", label: str = "any",
              concept: str = "", offset: int = 0):
        return site.index_page(q=q, kind=kind, layer=layer, type=type, cls=cls, label=label, concept=concept,
                               offset=max(0, offset))

    @app.get("/go")
    def go(unit: str = ""):
        try:
            text = unit.strip()
            ref = parse_unit_text(text if "/" in text or ":" in text else text.upper())
        except UnitError:
            raise NotFound(f"{unit[:60]!r} is not a unit name (write N<layer>.<index>, H<layer>.<index> "
                           f"or kind/layer/index)") from None
        kind, layer, idx = parse_unit(ref.kind, ref.layer, ref.idx, book.unit_context())
        return RedirectResponse(site.unit_url(kind, layer, idx), 303)

    @app.get("/static/{name}")
    def static_file(name: str):
        if name not in static:
            raise NotFound(f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=300"})

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    # ------------------------------------------------------------------ label API
    def _unit_json(kind: str, layer: int, idx: int) -> dict[str, Any]:
        label, notes, status = book.unit_label(kind, layer, idx)
        return {"kind": kind, "layer": layer, "idx": idx, "label": label, "notes": notes, "status": status}

    @app.get("/api/unit/{kind}/{layer}/{idx}")
    def unit_json(kind: str, layer: str, idx: str):
        return _unit_json(*parse_unit(kind, layer, idx, book.unit_context()))

    @app.post("/api/unit/{kind}/{layer}/{idx}/label")
    async def set_label(kind: str, layer: str, idx: str, request: Request):
        kind, layer, idx = parse_unit(kind, layer, idx, book.unit_context())
        ctype = request.headers.get("content-type", "")
        raw = await request.body()
        if ctype.startswith("application/json"):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise CircuitbookError("request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise CircuitbookError("request body must be a JSON object with label / notes / status")
        elif ctype.startswith("application/x-www-form-urlencoded"):
            body = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}
        else:
            raise CircuitbookError("send JSON (application/json) or a form (application/x-www-form-urlencoded)")
        fields = {}
        for name, limit in (("label", MAX_LABEL), ("notes", MAX_NOTES), ("status", 20)):
            v = body.get(name)
            if v is None:
                continue
            if not isinstance(v, str):
                raise CircuitbookError(f"{name} must be a string")
            if len(v) > limit:
                raise CircuitbookError(f"{name} is {len(v)} characters long; the limit is {limit}")
            fields[name] = v.strip() if name != "notes" else v
        author = body.get("author") if isinstance(body.get("author"), str) else "web"
        # set_label validates the status and runs in one transaction with its history row
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(book.set_label, kind, layer, idx, author=author[:100], **fields)
        if ctype.startswith("application/x-www-form-urlencoded"):
            return RedirectResponse(site.unit_url(kind, layer, idx), 303)
        return await run_in_threadpool(_unit_json, kind, layer, idx)

    # ------------------------------------------------------------------ prompt page and graph export
    def _query(request: Request) -> PromptQuery:
        if runner is None:
            raise NotFound("the prompt page needs a model: restart with circuitbook serve BOOK --model MODEL")
        p = request.query_params

        def num(name: str, default: int) -> int:
            v = p.get(name, "")
            try:
                return int(v) if v.strip() else default
            except ValueError:
                raise CircuitbookError(f"{name} must be an integer, not {v[:40]!r}") from None

        tid = p.get("target_id", "")
        q = PromptQuery(text=p.get("text", ""), target=p.get("target", ""),
                        target_id=num("target_id", 0) if tid.strip() else None, pos=num("pos", -1),
                        nodes=num("nodes", 40), edges=num("edges", 150), ablate=tuple(p.getlist("ablate")),
                        mode=p.get("mode", "zero"), features=p.get("features", ""))
        return q

    @app.get("/prompt", response_class=HTMLResponse)
    def prompt_page(request: Request):
        html, status = site.prompt_page(_query(request), runner)
        return HTMLResponse(html, status)

    def _graph(request: Request):
        q = _query(request)
        q.check()
        if not q.text:
            raise CircuitbookError("text (the prompt) is required")
        return runner.graph(q)

    @app.get("/api/graph.json")
    def graph_json(request: Request):
        return JSONResponse(linked_json(_graph(request)),
                            headers={"Content-Disposition": 'attachment; filename="graph.json"'})

    @app.get("/api/graph.svg")
    def graph_svg(request: Request):
        from ..graph import to_svg

        return Response(to_svg(_graph(request), link=node_url), media_type="image/svg+xml",
                        headers={"Content-Disposition": 'attachment; filename="graph.svg"'})

    from .saved import add_saved_graph_routes

    add_saved_graph_routes(app, book, site, runner)  # before the unit pages' catch-all route

    @app.get("/{kind}/{layer}/{idx}", response_class=HTMLResponse)
    def unit_page(kind: str, layer: str, idx: str):
        return site.unit_page(kind, layer, idx)

    from .scorecard import register as register_scorecard

    register_scorecard(app, book)  # GET /scorecard (web/scorecard.py)
    app.state.runner = runner
    return app
