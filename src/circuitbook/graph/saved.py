"""Graphs as durable, annotated objects in the book: save, load, recompute, group, hypothesise, test.

    save(book, name, g, prompt, model_fingerprint)      store a computed graph (refuses a name that exists
                                                        unless overwrite=True)
    load(book, name) -> SavedGraph                      the graph as saved: re-renders with no model
    recompute(book, name, model) -> (Graph, changed)    the same prompt / target / settings through ``model``;
                                                        ``changed``: the model's fingerprint is not the saved one
    set_groups / auto_group / view                      supernodes (``.supernodes``) stored with the graph
    add_hypothesis / run_hypothesis                     a claim, its test and the recorded evidence

A hypothesis' ``test`` is {"how": zero | mean | resample | patch | steer, "supernode": NAME or "nodes":
[ids], "expect": "decrease" | "increase", "other": prompt (patch), "scale": float (steer)} and its
``threshold`` a logit change: the experiment is **supported** when the target's logit (or logit
difference) moves by at least ``threshold`` in the expected direction (delta <= -threshold for
"decrease", delta >= threshold for "increase"), else **refuted**. Running it on a model whose fingerprint
differs from the graph's is refused (:class:`ModelChanged`): recompute and save the graph again first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..book import graphs as store
from ..errors import CircuitbookError
from .render import from_json, to_json
from .supernodes import Supernode, auto_groups, check_groups, collapse
from .types import Graph, GraphError

EXPECT = ("decrease", "increase")


class ModelChanged(CircuitbookError):
    """An experiment asked of a model that is not the one the graph was computed with."""


@dataclasses.dataclass
class SavedGraph:
    id: int
    name: str
    prompt: str
    graph: Graph
    settings: dict
    model_fingerprint: str | None
    book_fingerprint: str | None
    created: float
    supernodes: list[Supernode]

    def grouped(self) -> Graph:
        """The graph at supernode level (the saved groups; the plain graph when there are none)."""
        return collapse(self.graph, self.supernodes)


def book_fingerprint(book) -> str:
    """A short hash of what the book held when the graph was saved (model, runs, components)."""
    return hashlib.sha256(repr(book.results_fingerprint()).encode()).hexdigest()[:16]


def target_prob(model, g: Graph) -> float | None:
    """The model's probability of the graph's target token at its position (None for a logit difference)."""
    import torch

    from ..model import run

    if g.contrast is not None:
        return None
    tokens = torch.as_tensor(g.tokens, dtype=torch.long)[None].to(model.weights.W_E.device)
    logits = run(model.weights, tokens, ("logits",))["logits"][0, g.pos].float()
    return float(logits.softmax(-1)[g.target])


def save(book, name: str, g: Graph, prompt, model_fingerprint: str | None, overwrite: bool = False,
         extra_settings: dict | None = None, model=None) -> int:
    """Store ``g`` under ``name``; with ``model``, also the target's probability (``settings["target_prob"]``,
    what the exchange format's logit node shows)."""
    if not isinstance(prompt, str):  # token ids: shown as their strings
        prompt = "".join(g.token_strs)
    d = to_json(g)
    nodes, edges = d.pop("nodes"), d.pop("edges")
    settings = {**g.settings, "pos": g.pos, "contrast": g.contrast, **(extra_settings or {})}
    if model is not None:
        settings["target_prob"] = target_prob(model, g)
    return store.save_graph(book, name, prompt=prompt, target=g.target, settings=settings, meta=d, nodes=nodes,
                            edges=edges, model_fingerprint=model_fingerprint,
                            book_fingerprint=book_fingerprint(book), overwrite=overwrite)


def load(book, name: str) -> SavedGraph:
    r = store.graph_row(book, name)
    g = from_json({**r["meta"], "nodes": r["nodes"], "edges": r["edges"]})
    groups = [Supernode(s["name"], s["members"], s["rule"]) for s in store.supernodes(book, r["id"])]
    return SavedGraph(r["id"], r["name"], r["prompt"], g, r["settings"], r["model_fingerprint"],
                      r["book_fingerprint"], r["created"], groups)


def compute(model, prompt, target, settings: dict, labels=None, transcoders=None):
    """The graph for ``settings`` (``prune`` present: influence pruning, else top-N); -> (Graph, report|None).
    A graph saved with transcoder features (``settings["transcoders"]``) needs those ``transcoders`` again
    (``circuitbook.dictionary.graph.book_transcoders``): GraphError without them."""
    from .attribution import attribute
    from .prune import attribute_pruned

    want = [t["number"] for t in settings.get("transcoders", [])]
    have = sorted(t.number for t in (transcoders or []))
    if sorted(want) != have:
        raise GraphError(f"the graph was built with the transcoder features of dictionaries {want or 'none'}, "
                         f"not {have or 'none'}: recompute it with the same dictionaries")
    pos, contrast = settings.get("pos", -1), settings.get("contrast")
    if settings.get("prune"):
        p = settings["prune"]
        return attribute_pruned(model, prompt, target, pool=settings.get("pool", 300), node_share=p["node_share"],
                                edge_share=p["edge_share"], labels=labels, pos=pos, contrast=contrast,
                                transcoders=transcoders)
    g = attribute(model, prompt, target, pos=pos, contrast=contrast, max_nodes=settings.get("max_nodes", 40),
                  max_edges=settings.get("max_edges", 150), node_threshold=settings.get("node_threshold", 0.0),
                  edge_threshold=settings.get("edge_threshold", 0.0),
                  keep_inputs=settings.get("keep_inputs", False), labels=labels, transcoders=transcoders)
    return g, None


def saved_transcoders(book, name: str) -> list[int]:
    """The numbers of the dictionaries whose features the saved graph ``name`` was built with (often [])."""
    return [t["number"] for t in load(book, name).settings.get("transcoders", [])]


def recompute(book, name: str, model, labels=None, transcoders=None) -> tuple[Graph, bool]:
    """The saved graph's prompt, target and settings through ``model`` (and the ``transcoders`` it was built
    with, if any); True when the model's fingerprint changed."""
    s = load(book, name)
    g, _ = compute(model, s.graph.tokens, s.graph.target, s.settings, labels, transcoders)  # the saved ids
    return g, model.fingerprint() != s.model_fingerprint


# --------------------------------------------------------------------------- supernodes
def set_groups(book, name: str, groups: list[Supernode], replace: bool = False) -> list[Supernode]:
    """Check ``groups`` against the graph (and the groups kept beside them) and store them."""
    s = load(book, name)
    keep = [] if replace else [x for x in s.supernodes if x.name not in {gr.name for gr in groups}]
    check_groups(s.graph, keep + list(groups))
    store.set_supernodes(book, s.id, [(gr.name, gr.members, gr.rule) for gr in groups], replace=replace)
    return keep + list(groups)


def book_types(book) -> dict[tuple[str, int, int], str]:
    """{unit: "type rule"} from the book's typing stage (neurons typed syntax / content with a rule)."""
    from ..book import roles

    try:
        rows = roles.unit_types(book)
    except Exception:  # a book without the typing tables (opened read-only before the migration)
        return {}
    return {("neuron", r["layer"], r["idx"]): (f"{r['type']} {r['rule']}".strip())
            for r in rows if r["type"] in ("syntax", "content")}


def auto_group(book, name: str) -> list[Supernode]:
    """Replace the graph's groups with :func:`~.supernodes.auto_groups` from the book's labels and types."""
    s = load(book, name)
    groups = auto_groups(s.graph, book_types(book))
    return set_groups(book, name, groups, replace=True)


# --------------------------------------------------------------------------- hypotheses
def _check_test(g: SavedGraph, test: dict) -> dict:
    how = test.get("how", "zero")
    from .experiment import KINDS

    if how not in KINDS:
        raise GraphError(f"test 'how' must be one of {', '.join(KINDS)}, not {how!r}")
    if test.get("expect", "decrease") not in EXPECT:
        raise GraphError(f"test 'expect' must be 'decrease' or 'increase', not {test.get('expect')!r}")
    if how == "patch" and not test.get("other"):
        raise GraphError("a patch test needs 'other', the prompt to patch from")
    if bool(test.get("supernode")) == bool(test.get("nodes")):
        raise GraphError("a test names either a supernode or a list of nodes")
    if test.get("supernode") and test["supernode"] not in {x.name for x in g.supernodes}:
        raise GraphError(f"the graph has no supernode {test['supernode']!r}; it has "
                         f"{', '.join(x.name for x in g.supernodes) or 'none'}")
    ids = {n.id for n in g.graph.nodes}
    for nid in test.get("nodes") or []:
        if nid not in ids:
            raise GraphError(f"the test names node {nid!r}, which is not in the graph")
    return {"how": how, "expect": test.get("expect", "decrease"),
            **{k: test[k] for k in ("supernode", "nodes", "other", "scale") if test.get(k) is not None}}


def add_hypothesis(book, name: str, text: str, test: dict, threshold: float) -> int:
    if not text.strip():
        raise GraphError("a hypothesis needs its text")
    if not threshold > 0:
        raise GraphError(f"the threshold (a logit change) must be > 0, not {threshold}")
    s = load(book, name)
    return store.add_hypothesis(book, s.id, text.strip(), _check_test(s, test), threshold)


def verdict(delta: float, expect: str, threshold: float) -> str:
    ok = delta <= -threshold if expect == "decrease" else delta >= threshold
    return "supported" if ok else "refuted"


def run_hypothesis(book, name: str, hyp_id: int, model) -> dict[str, Any]:
    """Run hypothesis ``hyp_id``'s test on ``model`` and record the evidence; returns the experiment row."""
    from .experiment import run_test

    s = load(book, name)
    h = store.hypothesis(book, s.id, hyp_id)
    fp = model.fingerprint()
    if fp != s.model_fingerprint:
        raise ModelChanged(f"graph {name!r} was computed with model {s.model_fingerprint}, not {fp}: "
                           f"recompute it (circuitbook graph ... --save {name} --overwrite) before testing")
    t = h["test"]
    members = t.get("nodes") or next(x.members for x in s.supernodes if x.name == t["supernode"])
    r = run_test(model, s.graph.tokens, members, s.graph.target, pos=s.graph.pos, contrast=s.graph.contrast,
                 how=t["how"], other=t.get("other"), scale=float(t.get("scale", 0.0)))
    import math

    result = {"test": t, "threshold": h["threshold"], "logit_before": r.logit_before, "logit_after": r.logit_after,
              "delta": r.delta, "prob_before": math.exp(r.logprob_before), "prob_after": math.exp(r.logprob_after),
              "prob_delta": math.exp(r.logprob_after) - math.exp(r.logprob_before),
              "top_before": [list(x) for x in r.top_before], "top_after": [list(x) for x in r.top_after],
              "members": list(members)}
    v = verdict(r.delta, t["expect"], h["threshold"])
    eid = store.record_experiment(book, hyp_id, result, v, fp)
    return {"id": eid, "hypothesis_id": hyp_id, "verdict": v, "result": result}


def to_text(result: dict) -> str:
    r = result["result"]
    return (f"{result['verdict']}: {r['test']['how']} {r['test'].get('supernode') or len(r['members'])} -> "
            f"logit {r['logit_before']:.4f} -> {r['logit_after']:.4f} (delta {r['delta']:+.4f}, threshold "
            f"{r['threshold']:g} {r['test']['expect']}), p {r['prob_before']:.4f} -> {r['prob_after']:.4f}; "
            f"now predicts " + ", ".join(f"{t[1]!r} {t[2]:.3f}" for t in r["top_after"][:3]))


def dumps_groups(groups: list[Supernode]) -> str:
    return json.dumps([dataclasses.asdict(g) for g in groups])
