"""Supernodes: named groups of a graph's nodes, found automatically or chosen, and the graph drawn at that level.

A :class:`Supernode` is a name, its member node ids and the ``rule`` that made it. :func:`auto_groups`
proposes disjoint groups, in this order (a node joins the first group that takes it):

    label   unit nodes whose units share a non-empty book label (at least two nodes)
    type    unit nodes whose units share a type (``types``: {(kind, layer, idx): "syntax PRON -> VERB"...},
            e.g. from the book's typing stage) — at least two nodes
    unit    the same unit (kind, layer, index) at several positions / sources
    source  unit nodes reading the same source position (heads: "reads ' upon'@2")

:func:`collapse` redraws the graph with each group as one node (id ``super/{name}``, kind "supernode",
value and direct the sums of its members', row the latest member's stage) and every edge between two
groups (or a group and an ungrouped node) the **exact sum** of the member edges it replaces; edges inside a
group disappear and their total is kept in ``settings["internal_weight"]``. Groups must be disjoint and
name nodes of the graph: otherwise one :class:`~.types.GraphError` naming the problem.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..units import kind_names, unit_key
from .types import Edge, Graph, GraphError, Node


@dataclasses.dataclass
class Supernode:
    name: str
    members: list[str]
    rule: str = "user"


def check_groups(g: Graph, groups: list[Supernode]) -> None:
    """Names unique and non-empty, members existing nodes of ``g``, no node in two groups, not the logit."""
    ids = {n.id for n in g.nodes}
    owner: dict[str, str] = {}
    names = set()
    for s in groups:
        if not s.name or "/" in s.name or len(s.name) > 100:
            raise GraphError(f"supernode name {s.name!r}: give 1..100 characters without '/'")
        if s.name in names:
            raise GraphError(f"two supernodes are named {s.name!r}")
        names.add(s.name)
        if not s.members:
            raise GraphError(f"supernode {s.name!r} has no members")
        for m in s.members:
            if m not in ids:
                raise GraphError(f"supernode {s.name!r} names node {m!r}, which is not in the graph")
            if m == "logit":
                raise GraphError(f"supernode {s.name!r}: the logit node cannot be grouped")
            if m in owner:
                raise GraphError(f"node {m!r} is in both supernode {owner[m]!r} and {s.name!r}")
            owner[m] = s.name


def _unit(n: Node) -> tuple[str, int, int] | None:
    if n.kind not in kind_names():
        return None
    return (n.kind, n.layer if n.group is None else n.group, n.index)  # features: (feature, dictionary, idx)


def auto_groups(g: Graph, types: dict[tuple[str, int, int], str] | None = None) -> list[Supernode]:
    """Disjoint groups by shared label, then shared type, then same unit (see the module docstring)."""
    taken: set[str] = set()
    out: list[Supernode] = []
    units = [(n, _unit(n)) for n in g.nodes if _unit(n) is not None]
    rules = [("label", lambda n, u: n.label or None),
             ("type", lambda n, u: (types or {}).get(u)),
             ("unit", lambda n, u: unit_key(*u)),
             ("source", lambda n, u: f"reads {n.token!r}@{n.src}" if n.src is not None else None)]
    used_names: set[str] = set()
    for rule, key in rules:
        by: dict[str, list[str]] = defaultdict(list)
        for n, u in units:
            if n.id not in taken:
                k = key(n, u)
                if k:
                    by[str(k)].append(n.id)
        for k, members in by.items():
            if len(members) < 2:
                continue
            name = k.replace("/", "\u2215")[:100]
            while name in used_names:
                name = name[:96] + "'"
            used_names.add(name)
            out.append(Supernode(name, members, rule))
            taken.update(members)
    return out


def collapse(g: Graph, groups: list[Supernode]) -> Graph:
    """The graph with each group as one node and edge weights summed exactly (module docstring)."""
    check_groups(g, groups)
    owner = {m: s.name for s in groups for m in s.members}
    nodes = [n for n in g.nodes if n.id not in owner]
    for s in groups:
        ms = [g.node(m) for m in s.members]
        top = max(ms, key=lambda n: n.stage)
        nodes.append(Node(f"super/{s.name}", "supernode", top.layer, len(ms), max(n.pos for n in ms), None, s.name,
                          sum(n.value for n in ms), sum(n.direct for n in ms), None, s.name,
                          stage_hint=top.stage))
    sums: dict[tuple[str, str], float] = defaultdict(float)
    internal = 0.0
    for e in g.edges:
        a = f"super/{owner[e.source]}" if e.source in owner else e.source
        b = f"super/{owner[e.target]}" if e.target in owner else e.target
        if a == b:
            internal += e.weight
        else:
            sums[(a, b)] += e.weight
    edges = sorted((Edge(a, b, w) for (a, b), w in sums.items()), key=lambda e: -abs(e.weight))
    nodes.sort(key=lambda n: (n.stage, n.pos, -1 if n.src is None else n.src, n.index))
    return dataclasses.replace(g, nodes=nodes, edges=edges,
                               settings={**g.settings, "supernodes": len(groups), "internal_weight": internal})
