"""Every URL the web layer gives a unit: one definition for the server, the static export and the graph SVG.

    unit_url("neuron", 0, 5)                          -> "/neuron/0/5"        (the server)
    unit_url("neuron", 0, 5, root="../../", static=True) -> "../../neuron/0/5.html"  (the export, from depth 2)
    node_url(node)                                    -> the unit page of a graph node ("/head/0/3" for
                                                         "head/0/3/7/2"), None for inputs and the logit

The graph stage (``circuitbook.graph``) knows no URLs: the web passes :func:`node_url` as ``to_svg``'s
``link=`` and adds a "link" to each node of the JSON it serves (:func:`linked_json`).
"""

from __future__ import annotations

from ..units import kind_names


def unit_url(kind: str, layer: int, idx: int, root: str = "/", static: bool = False) -> str:
    """The page of unit (kind, layer, idx) under ``root`` ("/" on the server, "../" * depth in the export);
    ``static``: the export's file name (``.html``)."""
    return f"{root}{kind}/{layer}/{idx}" + (".html" if static else "")


def node_url(node, root: str = "/", static: bool = False) -> str | None:
    """The unit page of a graph node (its kind, layer and index), or None when it is no unit (input, logit)."""
    if node.kind not in kind_names():
        return None
    group = getattr(node, "group", None)  # features: the dictionary's number is their unit's layer slot
    return unit_url(node.kind, node.layer if group is None else group, node.index, root, static)


def saved_graph_url(name: str, action: str = "") -> str:
    """The page of saved graph ``name`` on the server (``action``: "group", "hypothesis", "export.json"...)."""
    from urllib.parse import quote

    return f"/graph/{quote(name, safe='')}" + (f"/{action}" if action else "")


def linked_json(graph) -> dict:
    """The graph's JSON (``circuitbook.graph.to_json``) with each node's "link" (:func:`node_url`) added."""
    from ..graph import to_json

    d = to_json(graph)
    for n, j in zip(graph.nodes, d["nodes"]):
        j["link"] = node_url(n)
    return d
