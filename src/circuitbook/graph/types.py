"""The data of an attribution graph: :class:`Node`, :class:`Edge`, :class:`Graph`, :class:`DirectLogit`.

Plain data only: the maths that fills them is :mod:`.attribution`, JSON / SVG / HTML is :mod:`.render`
(which imports this module; nothing here imports it), and URLs for nodes belong to ``circuitbook.web``.

**Nodes** (each writes one vector into the residual stream at one position):

    input  k         id "input/{k}": token embedding plus positional embedding at position k
    head   l,h,q,k   id "head/{l}/{h}/{q}/{k}": head h of layer l at query (destination) position q
                     reading source (key) position k; ``pos`` = q, ``src`` = k
    neuron l,i,q     id "neuron/{l}/{i}/{q}": neuron i of layer l at position q
    feature n,i,q    id "feature/{n}/{i}/{q}": feature i of dictionary n (a transcoder in place of layer
                     ``layer``'s MLP) at position q; ``layer`` = the model layer, ``group`` = n
    error l,q        id "error/{l}/{q}": that transcoder's frozen error at q (MLP output minus its output)
    logit            id "logit": the target logit[pos, target] (or logit[pos, target] - logit[pos, contrast])

**Node ordering.** ``Node.stage`` is the order in the forward: inputs 0, layer-l heads 2l+1, layer-l
neurons (or features and error nodes) 2l+2, the logit 2*n_layers+1. ``Graph.nodes`` is sorted by (stage, pos, src (None first), index):
inputs, layer 0 heads, layer 0 neurons, ..., the logit last.

**Edge orientation and sign.** An :class:`Edge` points from ``source`` (the writer, earlier in the
forward) to ``target`` (the reader, later): s -> t exists only when s writes at the position t reads and
``s.stage < t.stage``. ``weight`` is the part of t's value that flows from s directly, in logit units:
positive means s pushes the target logit up through t, negative down. ``Graph.edges`` is sorted by
|weight|, largest first.

**Values and the conservation sums** (exact up to float32 rounding; all in logit units):

    node value        value(n) = n's total effect on the target logit in the frozen model
    over the inputs   logit == sum_k value(input k) + sum(Graph.bias_flow.values())
    direct terms      logit == sum(direct of every node at pos) + sum(Graph.constants.values())
                      (:meth:`DirectLogit.total` is this sum)
    with transcoders  the same sums, with feature and error nodes among the nodes and the error nodes'
                      total value one entry of bias_flow (``blocks.{l}.transcoder.error``): see
                      :mod:`.attribution`
    edges             with no pruning: sum_t w(s -> t) == value(s) and
                      sum_s w(s -> t) + (t's bias in-flow) == value(t)

The input sums hold over ALL inputs, pruned or not; the edge sums only for an unpruned graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from ..errors import CircuitbookError
from ..units import kind_names, unit_kind


class GraphError(CircuitbookError, ValueError):
    """A prompt, target token or position that cannot be attributed."""


@dataclasses.dataclass
class Node:
    """One node of an attribution graph.

    ``id``: "input/{pos}", "head/{layer}/{head}/{q}/{k}", "neuron/{layer}/{idx}/{pos}",
    "feature/{dictionary}/{idx}/{pos}", "error/{layer}/{pos}" or "logit".
    ``kind``: "input" | "head" | "neuron" | "feature" | "error" | "logit".
    ``layer``: model layer; -1 for inputs, n_layers for the logit.
    ``index``: head, neuron or feature index; the token id for inputs and the logit (the target token);
        0 for error nodes.
    ``pos``: the position the node writes to (heads: the query / destination position; logit: target pos).
    ``src``: heads only: the source (key) position it reads; None otherwise.
    ``token``: the token string at ``pos`` (heads: at ``src``; logit: the target token's string).
    ``value``: total effect on the target logit (logit units; the logit node: the logit itself).
    ``direct``: direct contribution to the logit through the frozen final norm (0 unless pos == target pos).
    ``activation``: neuron / feature activation, head attention weight pattern[q, k], the error vector's
        norm for error nodes, logit for the logit, None for inputs.
    ``label``: the book's label for the unit (neurons, heads, features), or None.
    ``group``: features and error nodes: the dictionary's number in the book (the ``n`` of
        ``feature/{n}/{idx}``); None otherwise.
    ``stage_hint``: supernodes only (kind "supernode", id "super/{name}", ``token`` its name): the row.
    """

    id: str
    kind: str
    layer: int
    index: int
    pos: int
    src: int | None
    token: str
    value: float
    direct: float
    activation: float | None
    label: str | None = None
    stage_hint: int | None = None  # a supernode's row: the latest stage among its members
    group: int | None = None  # features / error nodes: the dictionary's number

    @property
    def stage(self) -> int:
        """Order in the forward: input 0, a unit 2l + its kind's sublayer (layer-l heads 2l+1, neurons 2l+2),
        logit 2*n_layers+1; a supernode (``stage_hint`` set) sits at its latest member's stage."""
        if self.stage_hint is not None:
            return self.stage_hint
        if self.kind == "input":
            return 0
        if self.kind in ("feature", "error"):  # in place of the layer's MLP
            return 2 * self.layer + 2
        if self.kind in kind_names():
            return 2 * self.layer + unit_kind(self.kind).sublayer
        return 2 * self.layer + 1

    @property
    def title(self) -> str:
        """A short human name: "L0 N123 @5", "L1 H3 7<-2", "' cat' @4", "logit ' dog' @9"."""
        if self.kind == "neuron":
            return f"L{self.layer} N{self.index} @{self.pos}"
        if self.kind == "head":
            return f"L{self.layer} H{self.index} {self.pos}<-{self.src}"
        if self.kind == "feature":
            return f"L{self.layer} F{self.group}.{self.index} @{self.pos}"
        if self.kind == "error":
            return f"L{self.layer} error @{self.pos}"
        if self.kind == "input":
            return f"{self.token!r} @{self.pos}"
        if self.kind == "supernode":
            return f"[{self.token}]"
        return f"logit {self.token!r} @{self.pos}"


@dataclasses.dataclass
class Edge:
    """``source`` -> ``target`` (node ids); ``weight`` in logit units (see the module docstring)."""

    source: str
    target: str
    weight: float


@dataclasses.dataclass
class Graph:
    """An attribution graph for one prompt and one target logit.

    ``tokens``/``token_strs``: the prompt ids and their strings, in position order (BOS first if added).
    ``pos``: the target position (non-negative); ``target``/``contrast``: token ids (contrast None unless a
    logit difference). ``logit``: the forward pass's logit (or difference) — the logit node's value.
    ``constants``: the direct constant terms (see :func:`~.attribution.direct_logit`); ``bias_flow``: every constant's
    total effect (sum of input values + sum of bias_flow == logit, over ALL inputs, pruned or not).
    ``nodes``: kept nodes ordered by layer (inputs, layer 0 heads, layer 0 neurons, ..., logit), then pos,
    src, index. ``edges``: kept edges ordered by |weight| descending.
    ``n_candidates``: nodes with nonzero value before pruning; ``settings``: the pruning options used.
    """

    model: str
    tokens: list[int]
    token_strs: list[str]
    pos: int
    target: int
    target_str: str
    contrast: int | None
    contrast_str: str | None
    logit: float
    constants: dict[str, float]
    bias_flow: dict[str, float]
    nodes: list[Node]
    edges: list[Edge]
    n_layers: int
    n_candidates: int
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


@dataclasses.dataclass
class DirectLogit:
    """Direct contributions to one logit through the frozen final norm, at target position ``pos``.

    ``input``: scalar, the input node at pos (the direct path W_E/W_pos -> W_U).
    ``heads``: [n_layers, n_heads, n_pos] — head (l, h) at query pos from source k (zero for k > pos).
    ``neurons``: [n_layers, d_mlp] — neuron (l, i) at pos (0 in a layer a transcoder replaces).
    ``constants``: {"b_U", "ln_final.b", "blocks.{l}.attn.b_O", "blocks.{l}.mlp.b_out"}: floats (a transcoder's
    layer: "blocks.{l}.transcoder.b_dec" instead of mlp.b_out).
    ``features``: {layer: [n_features]} — a transcoder's feature i at pos; ``errors``: {layer: float} — its
    error node at pos.
    ``logit``: the forward's logit; ``total()`` == ``logit`` up to float rounding.
    """

    input: float
    heads: Tensor
    neurons: Tensor
    constants: dict[str, float]
    logit: float
    features: dict[int, Tensor] = dataclasses.field(default_factory=dict)
    errors: dict[int, float] = dataclasses.field(default_factory=dict)

    def total(self) -> float:
        units = float(self.heads.double().sum() + self.neurons.double().sum())
        units += sum(float(f.double().sum()) for f in self.features.values()) + sum(self.errors.values())
        return self.input + units + sum(self.constants.values())
