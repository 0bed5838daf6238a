"""Exchange with Neuronpedia / circuit-tracer: our saved graph <-> their graph JSON.

Their graph file (``circuit_tracer/frontend/graph_models.py``: ``Model``) is

    {"metadata": {"slug", "scan", "transcoder_list": [], "prompt_tokens": [str], "prompt", "node_threshold"},
     "qParams": {"pinnedIds": [], "supernodes": [[name, node_id, ...]], "linkType", "clickedId", "sg_pos"},
     "nodes": [{"node_id", "feature": int, "layer": str, "ctx_idx": int, "feature_type", "token_prob",
                "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}],
     "links": [{"source": node_id, "target": node_id, "weight": float}]}

How our nodes map (``layer`` is the model layer; their frontend orders rows by it):

    input k (token t)        "E_{t}_{k}", layer "E", feature k, feature_type "embedding"
    neuron l,i @q            "{l}_{i}_{q}", feature i, feature_type "mlp neuron"
    feature n,i @q (layer l) "{l}_{i}_{q}", feature i, feature_type "mlp feature" (a transcoder's feature)
    error l @q               "{l}_{ERROR_FEATURE}_{q}", feature_type "mlp reconstruction error"
    head l,h q<-k            "{l}_{HEAD_BASE + h * 1000 + k}_{q}", feature HEAD_BASE + h*1000 + k,
                             feature_type "attention head"  (their files have no head nodes; the source
                             position is folded into the feature number so every node id is unique)
    logit (target t @p)      "{n_layers + 1}_{t}_{p}", layer n_layers + 1, feature_type "logit",
                             is_target_logit, token_prob, clerp 'Output "t" (p=...)'

``clerp`` is the book's label; ``activation`` our activation; ``influence`` None. Supernodes go to
``qParams.supernodes`` as [name, member node ids...]. :func:`import_graph` reads such a file back as a
:class:`~.types.Graph` for display: embeddings -> inputs, the target logit -> "logit", every other node ->
kind "feature" on its layer's MLP row, labelled by its clerp; node values are not in the file (0).

With ``feature_dirs`` (one folder URL per model layer, what :mod:`.feature_files` writes the unit pages
into) the file points their frontend at those feature files: ``metadata.scan`` is "custom-" + scan and
``metadata.transcoder_list[l]`` layer l's folder (their ``init-cg-feature-detail.js`` reads a node's
feature file from ``transcoder_list[node.layer] + "/" + node.feature + ".json"`` for a "custom-" scan),
and head / neuron nodes get feature_type "cross layer transcoder", the only type whose feature file that
panel loads. Node ids, ``feature`` numbers and layers are the same either way.
"""

from __future__ import annotations

import math

from .types import Edge, Graph, GraphError, Node

HEAD_BASE = 1_000_000
ERROR_FEATURE = 2 * HEAD_BASE  # a transcoder's error node: one per layer and position, apart from every feature
LOADABLE = "cross layer transcoder"  # the feature_type whose feature file their feature panel loads


def _ct_id(n: Node, g: Graph) -> tuple[str, int, str, str]:
    """-> (node_id, feature, layer, feature_type)."""
    if n.kind == "input":
        return f"E_{n.index}_{n.pos}", n.pos, "E", "embedding"
    if n.kind == "logit":
        return f"{g.n_layers + 1}_{n.index}_{n.pos}", n.index, str(g.n_layers + 1), "logit"
    if n.kind == "head":
        f = HEAD_BASE + n.index * 1000 + (n.src or 0)
        return f"{n.layer}_{f}_{n.pos}", f, str(n.layer), "attention head"
    if n.kind == "error":
        return f"{n.layer}_{ERROR_FEATURE}_{n.pos}", ERROR_FEATURE, str(n.layer), "mlp reconstruction error"
    return f"{n.layer}_{n.index}_{n.pos}", n.index, str(n.layer), f"mlp {n.kind}"


def ct_feature(n: Node, g: Graph) -> int:
    """The ``feature`` number node ``n`` gets in their file (it names the node's feature file)."""
    return _ct_id(n, g)[1]


def export_graph(g: Graph, slug: str, prompt: str, supernodes=(), scan: str = "circuitbook",
                 token_prob: float | None = None, node_threshold: float | None = None,
                 feature_dirs: list[str] | None = None) -> dict:
    if feature_dirs is not None:
        if len(feature_dirs) != g.n_layers:
            raise GraphError(f"feature_dirs: one folder per layer ({g.n_layers}), not {len(feature_dirs)}")
        scan = "custom-" + scan
    ids = {}
    nodes = []
    for n in g.nodes:
        nid, feat, layer, ftype = _ct_id(n, g)
        if feature_dirs is not None and n.kind not in ("input", "logit"):
            ftype = LOADABLE
        ids[n.id] = nid
        d = {"node_id": nid, "feature": feat, "layer": layer, "ctx_idx": n.pos, "feature_type": ftype,
             "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": nid,
             "clerp": n.label or "", "influence": None,
             "activation": n.activation if n.activation is not None and math.isfinite(n.activation) else None}
        if n.kind == "logit":
            p = token_prob if token_prob is not None else 0.0
            d.update(is_target_logit=True, token_prob=p, clerp=f'Output "{n.token}" (p={p:.3f})')
        nodes.append(d)
    links = [{"source": ids[e.source], "target": ids[e.target], "weight": e.weight} for e in g.edges
             if e.source in ids and e.target in ids]
    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": list(feature_dirs or []),
                     "prompt_tokens": list(g.token_strs), "prompt": prompt, "node_threshold": node_threshold},
        "qParams": {"pinnedIds": [], "supernodes": [[s.name, *[ids[m] for m in s.members]] for s in supernodes],
                    "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes, "links": links,
    }


def export_saved(s, book=None, feature_dirs: list[str] | None = None) -> dict:
    """A :class:`~.saved.SavedGraph` as their graph JSON (slug = its name; scan names the model)."""
    prune = s.settings.get("prune") or {}
    return export_graph(s.graph, s.name, s.prompt, s.supernodes, scan=f"circuitbook:{s.graph.model}",
                        token_prob=s.settings.get("target_prob"), node_threshold=prune.get("node_share"),
                        feature_dirs=feature_dirs)


def import_graph(d: dict) -> Graph:
    """Their graph JSON -> a displayable Graph (see the module docstring); GraphError naming what is missing
    or malformed."""
    try:
        meta, raw_nodes, links = d["metadata"], d["nodes"], d["links"]
        strs = list(meta["prompt_tokens"])
    except (KeyError, TypeError) as e:
        raise GraphError(f"not a circuit-tracer graph file (missing {e})") from None
    try:
        return _import_graph(meta, raw_nodes, links, strs)
    except GraphError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, StopIteration) as e:
        raise GraphError(f"not a circuit-tracer graph file (malformed nodes or links: {type(e).__name__}: {e})") from None


def _import_graph(meta: dict, raw_nodes: list, links: list, strs: list[str]) -> Graph:
    logits = [n for n in raw_nodes if n.get("feature_type") == "logit"]
    target = next((n for n in logits if n.get("is_target_logit")), logits[0] if logits else None)
    if target is None:
        raise GraphError("the graph file has no logit node")
    layers = [int(n["layer"]) for n in raw_nodes if str(n.get("layer", "E")).lstrip("-").isdigit()
              and n.get("feature_type") != "logit"]
    L = max(layers, default=0) + 1
    ids: dict[str, str] = {}
    nodes: list[Node] = []
    tokens = [0] * len(strs)
    for n in raw_nodes:
        nid, ft, pos = n["node_id"], n.get("feature_type", ""), int(n.get("ctx_idx", 0))
        tok = strs[pos] if 0 <= pos < len(strs) else ""
        if ft == "logit":
            if n is not target:
                continue
            ids[nid] = "logit"
            nodes.append(Node("logit", "logit", L, int(n.get("feature", 0)), pos, None,
                              (n.get("clerp") or "").split('"')[1] if '"' in (n.get("clerp") or "") else "",
                              0.0, 0.0, None))
        elif ft == "embedding":
            ids[nid] = f"input/{pos}"
            parts = nid.split("_")
            if len(parts) == 3 and parts[1].isdigit() and 0 <= pos < len(tokens):
                tokens[pos] = int(parts[1])
            nodes.append(Node(f"input/{pos}", "input", -1, tokens[pos] if 0 <= pos < len(tokens) else 0, pos, None,
                              tok, 0.0, 0.0, None))
        else:
            layer = int(n["layer"]) if str(n.get("layer")).lstrip("-").isdigit() else 0
            ids[nid] = nid
            nodes.append(Node(nid, "feature", layer, int(n.get("feature", 0)), pos, None, tok, 0.0, 0.0,
                              n.get("activation"), n.get("clerp") or ft, stage_hint=2 * layer + 2))
    edges = [Edge(ids[e["source"]], ids[e["target"]], float(e["weight"])) for e in links
             if e.get("source") in ids and e.get("target") in ids]
    edges.sort(key=lambda e: -abs(e.weight))
    nodes.sort(key=lambda n: (n.stage, n.pos, n.index))
    t = nodes[-1] if nodes and nodes[-1].id == "logit" else next(x for x in nodes if x.id == "logit")
    return Graph(model=str(meta.get("scan", "")), tokens=tokens, token_strs=strs, pos=t.pos, target=t.index,
                 target_str=t.token, contrast=None, contrast_str=None, logit=0.0, constants={}, bias_flow={},
                 nodes=nodes, edges=edges, n_layers=L, n_candidates=len(nodes) - 1,
                 settings={"imported": meta.get("slug", "")})


def import_supernodes(d: dict) -> list[list[str]]:
    """qParams.supernodes of their file, with node ids mapped as :func:`import_graph` maps them."""
    out = []
    emb = {n["node_id"]: f"input/{n.get('ctx_idx', 0)}" for n in d.get("nodes", []) if n.get("feature_type") == "embedding"}
    for s in (d.get("qParams") or {}).get("supernodes", []):
        if isinstance(s, list) and s:
            out.append([s[0], *[emb.get(m, m) for m in s[1:]]])
    return out
