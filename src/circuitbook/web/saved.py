"""Saved graphs on the server: the Save button's route and a page per saved graph (group, annotate, test).

Routes (writes are form posts answered by a 303 redirect to the graph's page; the app's guard refuses a
cross-origin ``Origin`` on every POST, as for label edits):

    POST /api/graphs/save                  name, overwrite + the prompt page's query (text, target, pos,
                                           nodes, edges; prune=1: influence pruning) -> saved graph page
    GET  /graph/{name}?view=supernodes|nodes   the saved graph (no model needed), its supernodes,
                                           hypotheses and their recorded experiments
    POST /graph/{name}/group               auto=1 (labels, types, same unit, same source) or
                                           supernode=NAME + member=ID (repeatable)
    POST /graph/{name}/hypothesis          text, supernode, how, expect, threshold, other, scale
    POST /graph/{name}/hypothesis/{id}/test    run the test with the server's model, record the evidence
    GET  /graph/{name}/export.json         the Neuronpedia / circuit-tracer graph JSON

Everything is a thin call into ``circuitbook.graph.saved``; bad input raises CircuitbookError, which the
app shows as a 400 page naming the problem.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from ..errors import CircuitbookError
from .links import node_url, saved_graph_url

MAX_FORM = 200_000


async def _form(request: Request) -> dict[str, list[str]]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise CircuitbookError("send a form (application/x-www-form-urlencoded)")
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise CircuitbookError(f"the form is {len(raw)} bytes; the limit is {MAX_FORM}")
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)


def _one(f: dict, name: str, default: str = "") -> str:
    return (f.get(name) or [default])[0]


def _float(f: dict, name: str) -> float | None:
    v = _one(f, name).strip()
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        raise CircuitbookError(f"{name} must be a number, not {v[:40]!r}") from None


def add_saved_graph_routes(app: FastAPI, book, site, runner) -> None:
    from ..graph import saved
    from ..graph.supernodes import Supernode

    def need_model():
        if runner is None:
            raise CircuitbookError("this needs a model: restart with circuitbook serve BOOK --model MODEL")
        return runner

    @app.post("/api/graphs/save")
    async def save_graph(request: Request):
        from .prompt import PromptQuery

        r = need_model()
        f = await _form(request)
        name = _one(f, "name").strip()
        tid = _one(f, "target_id").strip()
        try:
            q = PromptQuery(text=_one(f, "text"), target=_one(f, "target"), target_id=int(tid) if tid else None,
                            pos=int(_one(f, "pos", "-1") or -1), nodes=int(_one(f, "nodes", "40") or 40),
                            edges=int(_one(f, "edges", "150") or 150), features=_one(f, "features"))
        except ValueError:
            raise CircuitbookError("target_id, pos, nodes and edges must be integers") from None
        q.check()
        if not q.text:
            raise CircuitbookError("text (the prompt) is required")

        def work():
            if _one(f, "prune"):
                from ..graph.prune import attribute_pruned

                with r.lock:
                    g, _ = attribute_pruned(r.model, q.text, q.target_arg, pos=q.pos, labels=r._labels(),
                                            transcoders=r.transcoders(q))
                extra = {"pool": 300}
            else:
                g, extra = r.graph(q), None
            saved.save(book, name, g, q.text, r.model.fingerprint(), overwrite=bool(_one(f, "overwrite")),
                       extra_settings=extra, model=r.model)

        await run_in_threadpool(work)
        return RedirectResponse(saved_graph_url(name), 303)

    @app.get("/graph/{name}", response_class=HTMLResponse)
    def graph_page(name: str, view: str = ""):
        from ..book.graphs import experiments, hypotheses
        from ..graph import to_svg

        s = saved.load(book, name)
        if view not in ("", "supernodes", "nodes"):
            raise CircuitbookError(f"view must be 'supernodes' or 'nodes', not {view!r}")
        view = view or ("supernodes" if s.supernodes else "nodes")
        shown = s.grouped() if view == "supernodes" else s.graph
        hyps = [{**h, "experiments": experiments(book, h["id"])} for h in hypotheses(book, s.id)]
        changed = runner is not None and runner.model.fingerprint() != s.model_fingerprint
        return HTMLResponse(site._page(
            "saved_graph.html", 0, s=s, g=s.graph, shown=shown, view=view, svg=Markup(to_svg(shown, link=node_url)),
            hyps=hyps, node_url=node_url, url=lambda a="": saved_graph_url(s.name, a), model_changed=changed,
            owner={m: x.name for x in s.supernodes for m in x.members}))

    @app.post("/graph/{name}/group")
    async def group(name: str, request: Request):
        f = await _form(request)
        if _one(f, "auto"):
            await run_in_threadpool(saved.auto_group, book, name)
        else:
            sn = _one(f, "supernode").strip()
            members = f.get("member") or []
            if not sn or not members:
                raise CircuitbookError("name the supernode and tick at least one node")
            await run_in_threadpool(saved.set_groups, book, name, [Supernode(sn, members, "user")])
        return RedirectResponse(saved_graph_url(name) + "?view=supernodes", 303)

    @app.post("/graph/{name}/hypothesis")
    async def hypothesis(name: str, request: Request):
        f = await _form(request)
        test = {"how": _one(f, "how", "zero"), "expect": _one(f, "expect", "decrease"),
                "supernode": _one(f, "supernode").strip() or None, "other": _one(f, "other").strip() or None,
                "scale": _float(f, "scale")}
        thr = _float(f, "threshold")
        if thr is None:
            raise CircuitbookError("the threshold (a logit change) is required")
        text = _one(f, "text")
        if len(text) > 2000:
            raise CircuitbookError("the hypothesis is longer than 2000 characters")
        await run_in_threadpool(saved.add_hypothesis, book, name, text, test, thr)
        return RedirectResponse(saved_graph_url(name), 303)

    @app.post("/graph/{name}/hypothesis/{hid}/test")
    async def test(name: str, hid: int):
        r = need_model()

        def work():
            with r.lock:
                return saved.run_hypothesis(book, name, hid, r.model)

        await run_in_threadpool(work)
        return RedirectResponse(saved_graph_url(name) + f"#hyp-{hid}", 303)

    @app.get("/graph/{name}/export.json")
    def export(name: str):
        from ..graph.exchange import export_saved

        return JSONResponse(export_saved(saved.load(book, name)),
                            headers={"Content-Disposition": 'attachment; filename="graph-circuit-tracer.json"'})
