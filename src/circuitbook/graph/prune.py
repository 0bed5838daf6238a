"""Pruning an attribution graph by influence on the target (circuit-tracer's rule), with its figures.

The graph's edges as a matrix ``A[t, s]`` = w(s -> t) (rows: readers, columns: writers). Every reader t
also gets an **error source** ``err_t`` carrying what its kept in-edges do not explain:
``A[t, err_t] = value(t) - sum_s w(s -> t)`` (bias in-flow, and nodes outside the graph). Then, as in
circuit-tracer (``circuit_tracer/graph.py``):

    N = |A| / row sums of |A|                       (each reader's in-flow, as shares)
    influence = l N + l N^2 + ...  = l ((I - N)^-1 - I)   with l = 1 on the logit node, 0 elsewhere

(the graph is a DAG so N is nilpotent and the series is finite). A node's influence is the share of the
target it carries along every path. **Nodes** kept: those whose influence is at least the value at which
the sorted influences (over all nodes and error sources) first reach ``node_share`` (default 0.8) of their
total; every input and the logit are always kept. **Edges** kept (among kept nodes): score(s -> t) =
N'[t, s] * (influence'(t) + l(t)) with N', influence' recomputed on the node-pruned matrix, at the cut
where the sorted scores reach ``edge_share`` (default 0.98). Then, repeatedly, a head / neuron node with
no kept out-edge or no kept in-edge is dropped (with its edges); a transcoder's error node (a frozen
constant) needs only a kept out-edge.

Figures (:class:`PruneReport`), all from the unpruned ``influence``:

    total      sum of the influence of every node and error source (logit excluded)
    kept       sum over kept nodes; dropped = sum over dropped nodes + every error source;
               kept + dropped == total exactly (up to float rounding) -- ``retained`` = kept / total
    replacement score   input influence / (input influence + error influence)   (circuit-tracer's)
    completeness        sum_t (1 - N[t, err_t]) (influence(t) + l(t)) / sum_t (influence(t) + l(t)):
                        the influence-weighted share of readers' in-flow the graph's nodes explain;
                        ``completeness_pruned`` is the same for the pruned graph (its error sources
                        absorb the dropped nodes and edges).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .types import Edge, Graph, GraphError


def normalize(A: Tensor) -> Tensor:
    """|A| with each row scaled to sum to 1 (zero rows stay zero)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-30)


def influence(N: Tensor, l: Tensor) -> Tensor:
    """l N + l N^2 + ... for a nilpotent N (a DAG's matrix); GraphError if it does not terminate."""
    cur = l @ N
    total = cur.clone()
    for _ in range(N.shape[0] + 1):
        if not cur.any():
            return total
        cur = cur @ N
        total += cur
    raise GraphError("influence did not converge: the graph's edges form a cycle")


def cut(scores: Tensor, share: float) -> float:
    """The score at which the descending cumulative sum of ``scores`` first reaches ``share`` of the total."""
    s = scores.flatten().sort(descending=True).values
    tot = s.sum()
    if tot <= 0:
        return float("inf")
    cum = s.cumsum(0) / tot
    i = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), s.numel() - 1)
    return float(s[i])


@dataclasses.dataclass
class PruneReport:
    node_share: float
    edge_share: float
    nodes_before: int
    nodes_after: int
    edges_before: int
    edges_after: int
    total: float
    kept: float
    dropped: float
    error: float
    replacement: float
    completeness: float
    completeness_pruned: float
    influence: dict[str, float]

    @property
    def retained(self) -> float:
        return self.kept / self.total if self.total > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["retained"] = self.retained
        return d

    def summary(self) -> str:
        return (f"influence pruning (nodes {self.node_share:g}, edges {self.edge_share:g}): "
                f"{self.nodes_before} -> {self.nodes_after} nodes, {self.edges_before} -> {self.edges_after} edges; "
                f"retained influence {self.kept:.4f} of {self.total:.4f} ({100 * self.retained:.1f}%, dropped "
                f"{self.dropped:.4f} incl. error {self.error:.4f}); replacement {self.replacement:.3f}, "
                f"completeness {self.completeness:.3f} -> {self.completeness_pruned:.3f} pruned")


def _matrix(g: Graph, ids: list[str], edges: list[Edge]) -> tuple[Tensor, Tensor]:
    """A [n + n, n + n] over nodes then one error source per node, and the logit weights l."""
    n = len(ids)
    at = {i: k for k, i in enumerate(ids)}
    A = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    for e in edges:
        if e.source in at and e.target in at:
            A[at[e.target], at[e.source]] += e.weight
    for k, nid in enumerate(ids):
        nd = g.node(nid)
        if nd.kind != "input":
            A[k, n + k] = nd.value - float(A[k, :n].sum())
    l = torch.zeros(2 * n, dtype=torch.float64)
    l[at["logit"]] = 1.0
    return A, l


def _completeness(A: Tensor, l: Tensor, n: int) -> float:
    N = normalize(A)
    out = influence(N, l) + l
    return float(((1 - N[:, n:].sum(1)) * out)[:n].sum() / out[:n].sum())


def prune_by_influence(g: Graph, node_share: float = 0.8, edge_share: float = 0.98) -> tuple[Graph, PruneReport]:
    """The graph cut to the nodes and edges carrying ``node_share`` / ``edge_share`` of the target's
    influence (see the module docstring), and the figures. ``g`` should hold its edges unpruned."""
    for name, v in (("node share", node_share), ("edge share", edge_share)):
        if not 0.0 <= v <= 1.0:
            raise GraphError(f"{name} must lie in [0, 1], not {v}")
    ids = [nd.id for nd in g.nodes]
    n = len(ids)
    A, l = _matrix(g, ids, g.edges)
    inf = influence(normalize(A), l)
    always = torch.tensor([g.node(i).kind in ("input", "logit") for i in ids] + [False] * n)
    keep = (inf >= cut(inf, node_share)) | always
    keep[n:] = False

    P = A.clone()
    P[~keep] = 0
    P[:, ~keep] = 0
    NP = normalize(P)
    scores = NP * (influence(NP, l) + l)[:, None]
    emask = (scores >= cut(scores, edge_share)) & (P != 0)
    emask[:, n:] = False
    unit = torch.tensor([g.node(i).kind not in ("input", "logit") for i in ids])
    source = torch.tensor([g.node(i).kind == "error" for i in ids])  # a transcoder's error: no in-edges by nature
    while True:
        emask[~keep] = False
        emask[:, ~keep] = False
        k_new = keep.clone()
        k_new[:n] &= ~unit | (emask[:n, :n].any(0) & (emask[:n, :n].any(1) | source))
        if torch.equal(k_new, keep):
            break
        keep = k_new

    kept_ids = {ids[k] for k in range(n) if keep[k]}
    at = {i: k for k, i in enumerate(ids)}
    new_edges = [e for e in g.edges if e.source in kept_ids and e.target in kept_ids
                 and bool(emask[at[e.target], at[e.source]])]
    not_logit = torch.ones(2 * n, dtype=torch.bool)
    not_logit[at["logit"]] = False
    total = float(inf[not_logit].sum())
    kept = float(inf[:n][keep[:n] & not_logit[:n]].sum())
    err = float(inf[n:].sum())
    dropped = float(inf[:n][~keep[:n] & not_logit[:n]].sum()) + err
    inputs = torch.tensor([g.node(i).kind == "input" for i in ids])
    tok = float(inf[:n][inputs].sum())
    pg = dataclasses.replace(
        g, nodes=[nd for nd in g.nodes if nd.id in kept_ids], edges=new_edges,
        settings={**g.settings, "prune": {"node_share": node_share, "edge_share": edge_share}})
    Ap, lp = _matrix(pg, [nd.id for nd in pg.nodes], new_edges)
    report = PruneReport(
        node_share=node_share, edge_share=edge_share, nodes_before=n - 1, nodes_after=len(pg.nodes) - 1,
        edges_before=len(g.edges), edges_after=len(new_edges), total=total, kept=kept, dropped=dropped, error=err,
        replacement=tok / (tok + err) if tok + err > 0 else 0.0, completeness=_completeness(A, l, n),
        completeness_pruned=_completeness(Ap, lp, len(pg.nodes)),
        influence={ids[k]: float(inf[k]) for k in range(n)})
    return pg, report


def attribute_pruned(model, prompt, target=None, *, pool: int = 300, node_share: float = 0.8,
                     edge_share: float = 0.98, labels=None, **kw) -> tuple[Graph, PruneReport]:
    """:func:`~.attribution.attribute` with the ``pool`` nodes of largest |value| (plus every input) and
    all their edges, then :func:`prune_by_influence`."""
    from .attribution import attribute

    g = attribute(model, prompt, target, max_nodes=pool, max_edges=None, keep_inputs=True, labels=labels, **kw)
    return prune_by_influence(g, node_share, edge_share)
