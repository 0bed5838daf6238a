"""Per-prompt attribution graphs: which inputs, heads and neurons make the model predict one token.

The decomposition is *exact* at the prompt: it linearises the model around this one forward pass by
freezing three things at the values the forward measured, after which the model is a linear function
of its input embeddings and its constant (bias) terms, and reproduces the forward's logit exactly:

1. **norm scales** — every LayerNorm/RMSNorm divides by the scale ``hook_scale`` measured in the forward.
   A frozen norm is linear: ``LN(x) . a = x . P(w * a) / s + b . a`` where ``P(v) = v - mean(v)`` for
   LayerNorm (it subtracts the mean) and ``P(v) = v`` for RMSNorm.
2. **attention patterns** — ``hook_pattern`` is held fixed, so a head is linear in its values: its output
   at query q is ``sum_k pattern[q, k] * v[k] @ W_O`` (``v`` includes ``b_V``).
3. **activation gates** — every activation is written ``act(x) = x * gamma`` and ``gamma`` frozen at this
   input: ``gamma = post / pre`` (GELU/ReLU: the fraction of the pre-activation the neuron passes on;
   gated MLPs: ``gamma = act(x @ W_gate)``, the gate branch, times the linear branch ``x @ W_in + b_in``).

Nodes (each writes one vector into the residual stream at one position):

    input  k         the token embedding plus positional embedding at position k  (W_E[tok_k] + W_pos[k])
    head   l,h,q,k   head h of layer l at query (destination) position q reading source position k:
                     pattern[h, q, k] * v[k, h] @ W_O[l, h]   (summing over k gives hook_result[q, h])
    neuron l,i,q     neuron i of layer l at position q: post[q, i] * W_out[l, i]
    logit            the target: logit[pos, target] (or logit[pos, target] - logit[pos, contrast])

**Transcoder features in place of the MLP** (``transcoders=[Transcoder, ...]``, :mod:`.replacement`; the CLI's
``--features NAME``): layer l's neuron nodes are replaced by

    feature n,i,q    feature i of dictionary n (its number in the book) at position q, id "feature/{n}/{i}/{q}":
                     act[q, i] * W_dec[i], act = activate(LN2(resid_mid[q]) @ W_enc + b_enc), its gate frozen
                     like a neuron's (gamma = act / pre: 1 where the feature fires, 0 elsewhere)
    error l,q        id "error/{l}/{q}": mlp_out[q] - (act[q] @ W_dec + b_dec), the MLP's true output minus
                     the transcoder's, frozen (a constant: it has no in-edges and no inputs flow through it)

so the layer still writes exactly what the MLP wrote. Every sum below stays exact with these changes of name:
the layer's bias constants are ``blocks.{l}.transcoder.b_dec`` (direct and flow) and
``blocks.{l}.transcoder.b_enc`` (flow) instead of ``mlp.b_out`` / ``mlp.b_in``; the feature and error nodes
at pos are among "every node at pos" of the direct sum (:class:`DirectLogit` ``features`` / ``errors``); and
the error nodes' total effect is one more bias-flow entry, ``blocks.{l}.transcoder.error`` (== the sum of the
layer's error node values), because, like a bias, no input flows through it.

**Direct contributions** (:func:`direct_logit`): through the frozen final norm the logit is
``resid[pos] . d + const`` with ``d = P(lnf_w * u) / s_final[pos]``, ``u = W_U[:, target]`` (minus
``W_U[:, contrast]``). ``resid[pos]`` is the sum of the input node at ``pos``, every head node with
q = pos, every neuron node at pos, and the biases b_O, b_out; so

    logit == input[pos] + heads.sum() + neurons.sum() + sum(constants.values())      (exactly)

(with transcoders: ``+ sum(features[l].sum()) + sum(errors.values())``, see :meth:`DirectLogit.total`)

with the documented constants ``b_U`` (b_U . u-coefficients), ``ln_final.b`` (lnf_b . u) and
``blocks.{l}.attn.b_O`` / ``blocks.{l}.mlp.b_out`` (each bias . d). The input node at ``pos`` read
directly by the unembedding is the *direct path* (W_E -> W_U).

**Node value** = the node's total effect on the logit in the frozen model: ``out_n . g_n`` where g_n is
the gradient of the logit with respect to the residual stream just after the node, at its position
(computed by an exact backward pass through the frozen model). Summing over inputs:

    logit == sum_k value(input k) + sum(bias_flow.values())                           (exactly)

where ``bias_flow`` holds the total effect of every constant term (b_U, ln_final.b, and per layer
attn.b_O, attn.b_V, ln1.b, mlp.b_in, mlp.b_out, ln2.b; a transcoder's layer: transcoder.b_enc,
transcoder.b_dec, ln2.b and transcoder.error).

**Edge weight** s -> t = the part of t's value that flows from s directly (not through another node):
``out_s . r_t`` where r_t is t's reading vector (for heads: through the frozen ln1 at source position
k, W_V, W_O and pattern; for neurons: through the frozen ln2 at q, W_in and the frozen gate; features: the same with W_enc;
error nodes read nothing; for the logit: d). Edges exist when s writes at the position t reads and s comes earlier (inputs < layer-l
heads < layer-l neurons < layer-(l+1) heads ...). With no pruning, edges conserve value both ways:
``sum_t w(s -> t) == value(s)`` and ``sum_s w(s -> t) + (t's bias in-flow) == value(t)``. All edge
weights and values are in logit units.

"Exactly" means up to float32 rounding: the decomposition is computed in float32 from the forward's
taps (a model run in bf16 agrees to bf16 precision).

Pruning keeps the logit node plus the ``max_nodes`` nodes of largest |value| (>= ``node_threshold``;
with ``keep_inputs`` every input token too), then the ``max_edges`` edges among them of largest
|weight| (>= ``edge_threshold``).

This module is the maths only: the node, edge and graph types (with their ordering and sign conventions)
are :mod:`.types`, prompt and token handling :mod:`.prompt`, JSON / SVG / HTML :mod:`.render`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import Tensor

from ..model.maths import centre
from .prompt import position, prompt_tokens, resolve_token, token_str, weights_of
from .replacement import by_layer, frozen_gate
from .types import DirectLogit, Edge, Graph, GraphError, Node


# --------------------------------------------------------------------------- the frozen forward
@dataclasses.dataclass
class _Units:
    """One layer's MLP units as the graph sees them: neurons (the MLP's own weights) or a transcoder's
    features (its encoder / decoder): W_in [d_model, n], b_in [n], W_out [n, d_model], b_out [d_model]."""

    kind: str  # "neuron" | "feature"
    W_in: Tensor
    b_in: Tensor
    W_out: Tensor
    b_out: Tensor
    number: int | None = None  # features: the dictionary's number in the book

    @property
    def n(self) -> int:
        return int(self.W_out.shape[0])

    def bias_names(self, l: int) -> tuple[str, str]:
        """(name of b_in's flow, name of b_out's constant / flow)."""
        if self.kind == "feature":
            return f"blocks.{l}.transcoder.b_enc", f"blocks.{l}.transcoder.b_dec"
        return f"blocks.{l}.mlp.b_in", f"blocks.{l}.mlp.b_out"


@dataclasses.dataclass
class _Trace:
    """Frozen quantities of one forward (float32, batch dropped). Per layer lists, positions first:
    s1, s2 [pos, 1]; pattern [n_heads, q, k]; v [k, n_heads, d_head]; gamma, post [pos, d_mlp];
    sf [pos, 1] (final norm scale); xf [d_model] (final normalized residual at the target pos);
    units: each layer's MLP units (neurons or a transcoder's features: then gamma / post are the features');
    err: per layer the frozen error [pos, d_model] (mlp_out - transcoder output), None for neuron layers."""

    s1: list[Tensor]
    pattern: list[Tensor]
    v: list[Tensor]
    s2: list[Tensor]
    post: list[Tensor]
    gamma: list[Tensor]
    sf: Tensor
    xf: Tensor
    units: list[_Units]
    err: list[Tensor | None]


def _trace(w, tokens: Tensor, pos: int, tcs: dict | None = None) -> _Trace:
    from ..model.forward import mlp_input, run

    L, tcs = w.cfg.n_layers, tcs or {}
    pre = "mlp.hook_pre_linear" if w.W_gate is not None else "mlp.hook_pre"
    per = ("ln1.hook_scale", "attn.hook_pattern", "attn.hook_v", "ln2.hook_scale", pre, "mlp.hook_post")
    taps = [f"blocks.{l}.{n}" for l in range(L) for n in per] + ["ln_final.hook_scale", "ln_final.hook_normalized"]
    taps += [f"blocks.{l}.{n}" for l in tcs for n in ("hook_resid_mid", "hook_mlp_out")]
    cache = run(w, tokens[None], taps)
    c = {k: v[0].float() for k, v in cache.items()}
    b = lambda l, n: c[f"blocks.{l}.{n}"]  # noqa: E731
    gammas, posts, units, errs = [], [], [], []
    for l in range(L):
        t = tcs.get(l)
        if t is None:
            lin, post = b(l, pre), b(l, "mlp.hook_post")
            gammas.append(frozen_gate(lin, post))  # where lin is 0, post is 0 (gated) or act(0) == 0
            posts.append(post)
            units.append(_Units("neuron", _f(w.W_in[l]), _f(w.b_in[l]), _f(w.W_out[l]), _f(w.b_out[l])))
            errs.append(None)
            continue
        t = t.to(c[taps[0]].device)
        x = mlp_input(w, l, cache[f"blocks.{l}.hook_resid_mid"][0]).float()  # ln2's output, as the forward has it
        fpre = x @ t.W_enc + t.b_enc
        act = t.activate(fpre).float()
        gammas.append(frozen_gate(fpre, act))
        posts.append(act)
        units.append(_Units("feature", t.W_enc, t.b_enc, t.W_dec, t.b_dec, t.number))
        errs.append(b(l, "hook_mlp_out") - (act @ t.W_dec + t.b_dec))
    return _Trace(
        s1=[b(l, "ln1.hook_scale") for l in range(L)], pattern=[b(l, "attn.hook_pattern") for l in range(L)],
        v=[b(l, "attn.hook_v") for l in range(L)], s2=[b(l, "ln2.hook_scale") for l in range(L)],
        post=posts, gamma=gammas,
        sf=c["ln_final.hook_scale"], xf=c["ln_final.hook_normalized"][pos], units=units, err=errs,
    )


def _f(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


@dataclasses.dataclass
class _Setup:
    tokens: Tensor
    pos: int
    target: int
    contrast: int | None
    u: Tensor  # [d_model] unembedding direction
    u_bias: float
    d: Tensor  # [d_model] reading vector of the logit through the frozen final norm
    logit: float
    trace: _Trace
    transcoders: dict = dataclasses.field(default_factory=dict)  # {layer: Transcoder}


def _setup(model, prompt, target, pos, contrast, transcoders=None) -> _Setup:
    w = weights_of(model)
    tcs = by_layer(transcoders, w.cfg)
    tokens = prompt_tokens(model, prompt)
    pos = position(pos, tokens.numel())
    trace = _trace(w, tokens, pos, tcs)
    W_U, b_U = _f(w.W_U), _f(w.b_U)
    if target is None:  # the model's own top prediction; one row of the unembedding, not all logits
        target = int((trace.xf @ W_U + b_U).argmax())
    target = resolve_token(model, target)
    u, u_bias = W_U[:, target], b_U[target]
    if contrast is not None:
        contrast = resolve_token(model, contrast, "contrast")
        if contrast == target:
            raise GraphError(f"contrast token {contrast} is the target itself; the difference would be 0")
        u, u_bias = u - W_U[:, contrast], u_bias - b_U[contrast]
    logit = float(trace.xf @ u + u_bias)
    d = centre(_f(w.lnf_w) * u, w.cfg.norm) / trace.sf[pos]
    return _Setup(tokens, pos, target, contrast, u, float(u_bias), d, logit, trace, tcs)


def direct_logit(model, prompt, target: int | str | None = None, pos: int = -1,
                 contrast: int | str | None = None, transcoders=None) -> DirectLogit:
    """Exact direct contributions of every node at ``pos`` to the target logit (see :class:`DirectLogit`).

    ``model``: a :class:`circuitbook.model.Model` (or bare Weights with token ids); ``target``: token id or
    one-token string (None: the model's top prediction); ``contrast``: optional second token for a logit
    difference; ``transcoders``: :class:`~.replacement.Transcoder` records whose features (and error) stand
    in for their layers' neurons (those layers' rows of ``neurons`` are then 0).
    """
    w = weights_of(model)
    s = _setup(model, prompt, target, pos, contrast, transcoders)
    tr, p, d = s.trace, s.pos, s.d
    heads, neurons, features, errors = [], [], {}, {}
    for l in range(w.cfg.n_layers):
        ov = torch.einsum("hed,d->he", _f(w.W_O[l]), d)  # [n_heads, d_head]
        heads.append(tr.pattern[l][:, p, :] * torch.einsum("khe,he->hk", tr.v[l], ov))
        U = tr.units[l]
        if U.kind == "neuron":
            neurons.append(tr.post[l][p] * (U.W_out @ d))
            continue
        neurons.append(torch.zeros(w.cfg.d_mlp, device=d.device))
        features[l] = tr.post[l][p] * (U.W_out @ d)
        errors[l] = float(tr.err[l][p] @ d)
    e = _f(w.W_E[s.tokens[p]]) + (_f(w.W_pos[p]) if w.W_pos is not None else 0.0)
    return DirectLogit(input=float(e @ d), heads=torch.stack(heads), neurons=torch.stack(neurons),
                       constants=_direct_constants(w, s), logit=s.logit, features=features, errors=errors)


# --------------------------------------------------------------------------- backward through the frozen model
@dataclasses.dataclass
class _Backward:
    """Per layer (positions first): g_mid [pos, d_model] (gradient just after attention, before the MLP),
    g_post [pos, d_model] (after the MLP); y [n_heads, q, d_head] = g_mid[q] @ W_O[h]^T;
    a [pos, d_mlp] = g_post @ W_out^T; g_in [pos, d_model] gradient at the embeddings.
    Values: inputs [pos]; heads [n_heads, q, k]; neurons [pos, d_mlp] (a transcoder's layer: its features
    [pos, n_features]); errors: per layer [pos] (None for neuron layers)."""

    g_mid: list[Tensor]
    g_post: list[Tensor]
    y: list[Tensor]
    a: list[Tensor]
    g_in: Tensor
    v_inputs: Tensor
    v_heads: list[Tensor]
    v_neurons: list[Tensor]
    bias_flow: dict[str, float]
    v_errors: list[Tensor | None] = dataclasses.field(default_factory=list)


def _embed(w, tokens: Tensor) -> Tensor:
    """Input node outputs [pos, d_model]: W_E[tok] + W_pos[pos]."""
    e = _f(w.W_E[tokens])
    if w.W_pos is not None:
        e = e + _f(w.W_pos[: tokens.numel()])
    return e


def _backward(w, s: _Setup) -> _Backward:
    cfg, tr = w.cfg, s.trace
    T = s.tokens.numel()
    g = torch.zeros(T, cfg.d_model, device=s.d.device)
    g[s.pos] = s.d
    flow = {"b_U": s.u_bias, "ln_final.b": float(_f(w.lnf_b) @ s.u)}
    g_mid, g_post, ys, As, vh, vn = [None] * cfg.n_layers, [None] * cfg.n_layers, [None] * cfg.n_layers, \
        [None] * cfg.n_layers, [None] * cfg.n_layers, [None] * cfg.n_layers
    ve = [None] * cfg.n_layers
    for l in reversed(range(cfg.n_layers)):
        # MLP: resid_post = resid_mid + sum_i gamma_i * (LN2(resid_mid) @ W_in[:, i] + b_in[i]) * W_out[i] + b_out
        # (a transcoder: W_enc, b_enc, W_dec, b_dec, plus its frozen error, a constant)
        U = tr.units[l]
        g_post[l] = g
        live = g.any(-1)  # the last layer only matters at the target position: skip the other rows
        a = torch.zeros(T, U.n, device=g.device)
        a[live] = g[live] @ U.W_out.T  # [pos, n]
        vn[l] = tr.post[l] * a
        ga = tr.gamma[l] * a
        raw = torch.zeros_like(g)
        raw[live] = ga[live] @ U.W_in.T  # [pos, d_model]
        n_in, n_out = U.bias_names(l)
        flow[n_out] = float(U.b_out @ g.sum(0))
        flow[n_in] = float((ga * U.b_in).sum())
        if tr.err[l] is not None:
            ve[l] = (tr.err[l] * g).sum(-1)
            flow[f"blocks.{l}.transcoder.error"] = float(ve[l].sum())
        flow[f"blocks.{l}.ln2.b"] = float(_f(w.ln2_b[l]) @ raw.sum(0))
        g = g + centre(raw * _f(w.ln2_w[l]), cfg.norm) / tr.s2[l]
        # attention: resid_mid = resid_pre + sum_{h,k} pattern[h,q,k] * (LN1(resid_pre[k]) @ W_V[h] + b_V[h]) @ W_O[h] + b_O
        g_mid[l] = g
        y = torch.einsum("qd,hed->hqe", g, _f(w.W_O[l]))  # [n_heads, q, d_head]
        ys[l] = y
        vh[l] = tr.pattern[l] * torch.einsum("khe,hqe->hqk", tr.v[l], y)
        t = torch.einsum("hqk,hqe->hke", tr.pattern[l], y)  # what each source position's value must carry
        raw = torch.einsum("hke,hde->kd", t, _f(w.W_V[l]))
        flow[f"blocks.{l}.attn.b_O"] = float(_f(w.b_O[l]) @ g.sum(0))
        flow[f"blocks.{l}.attn.b_V"] = float(torch.einsum("hke,he->", t, _f(w.b_V[l])))
        flow[f"blocks.{l}.ln1.b"] = float(_f(w.ln1_b[l]) @ raw.sum(0))
        g = g + centre(raw * _f(w.ln1_w[l]), cfg.norm) / tr.s1[l]
        As[l] = a
    v_in = (_embed(w, s.tokens) * g).sum(-1)
    return _Backward(g_mid, g_post, ys, As, g, v_in, vh, vn, flow, ve)


# --------------------------------------------------------------------------- the graph
def _label_map(labels) -> dict[tuple[str, int, int], str]:
    """Accept {(kind, layer, idx): label} or an iterable of objects with .kind/.layer/.idx/.label
    (``book.labelled()``)."""
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {(str(k[0]), int(k[1]), int(k[2])): str(v) for k, v in labels.items() if v}
    return {(u.kind, int(u.layer), int(u.idx)): u.label for u in labels if getattr(u, "label", None)}


def attribute(model, prompt, target: int | str | None = None, *, pos: int = -1,
              contrast: int | str | None = None, max_nodes: int | None = 40, max_edges: int | None = 150,
              node_threshold: float = 0.0, edge_threshold: float = 0.0, keep_inputs: bool = False,
              labels=None, transcoders=None) -> Graph:
    """The attribution graph of ``logit[pos, target]`` (minus ``logit[pos, contrast]``) for ``prompt``.

    ``model``: a loaded :class:`circuitbook.model.Model`. ``prompt``: text (BOS is prepended) or token ids.
    ``target``: token id or one-token string; None picks the model's top prediction at ``pos``.
    ``max_nodes`` / ``max_edges``: budgets (None: keep everything with nonzero value / weight);
    ``node_threshold`` / ``edge_threshold``: minimum |value| / |weight| in logit units.
    ``keep_inputs``: also keep every input token (beyond the budget), so the prompt forms the bottom row.
    ``labels``: {(kind, layer, idx): label} or ``book.labelled()``; kept nodes carry them (features:
    ("feature", dictionary number, idx)).
    ``transcoders``: :class:`~.replacement.Transcoder` records (``circuitbook.dictionary.graph``): each one's
    features and one error node per position replace its layer's neurons.
    See the module docstring for what values and weights mean and which sums are exact.
    """
    w = weights_of(model)
    cfg = w.cfg
    s = _setup(model, prompt, target, pos, contrast, transcoders)
    bw = _backward(w, s)
    tr, T, L, H = s.trace, s.tokens.numel(), cfg.n_layers, cfg.n_heads
    toks = [int(t) for t in s.tokens.tolist()]
    strs = [token_str(model, t) for t in toks]
    lab = _label_map(labels)

    # ---- choose nodes: all candidate values in one flat vector (inputs, then per layer heads, neurons)
    groups = [("input", -1, bw.v_inputs)]
    for l in range(L):
        groups += [("head", l, bw.v_heads[l]), (tr.units[l].kind, l, bw.v_neurons[l])]
        if bw.v_errors[l] is not None:
            groups.append(("error", l, bw.v_errors[l]))
    flat = torch.cat([v.flatten() for _, _, v in groups]).abs()
    live = flat > 0
    if node_threshold > 0:
        live &= flat >= node_threshold
    n_candidates = int((flat > 0).sum())
    idx = live.nonzero()[:, 0]
    if max_nodes is not None and idx.numel() > max_nodes:
        idx = idx[flat[idx].topk(max_nodes).indices]
    if keep_inputs:  # the whole prompt as the bottom row, whatever its values
        idx = torch.cat([idx, torch.arange(T, device=idx.device)]).unique()
    offsets, o = [], 0
    for _, _, v in groups:
        offsets.append(o)
        o += v.numel()

    d_dir = s.d
    nodes: list[Node] = []
    outs, reads = [], []  # per node: (write pos, stage, out vec) / (read pos, stage, reading vec)
    W_E_rows = _embed(w, s.tokens)
    for j in sorted(idx.tolist()):
        gi = max(i for i in range(len(groups)) if offsets[i] <= j)
        kind, l, vals = groups[gi]
        r = j - offsets[gi]
        if kind == "input":
            k = r
            out = W_E_rows[k]
            nodes.append(Node(f"input/{k}", "input", -1, toks[k], k, None, strs[k], float(vals[k]),
                              float(out @ d_dir) if k == s.pos else 0.0, None))
            outs.append((k, 0, out))
            reads.append(None)
            continue
        if kind == "head":
            h, q, k = r // (T * T), (r // T) % T, r % T
            patt = tr.pattern[l][h, q, k]
            out = patt * (tr.v[l][k, h] @ _f(w.W_O[l, h]))
            rv = patt * centre(_f(w.ln1_w[l]) * (_f(w.W_V[l, h]) @ bw.y[l][h, q]), cfg.norm) / tr.s1[l][k]
            nodes.append(Node(f"head/{l}/{h}/{q}/{k}", "head", l, h, q, k, strs[k], float(vals[h, q, k]),
                              float(out @ d_dir) if q == s.pos else 0.0, float(patt),
                              lab.get(("head", l, h))))
            outs.append((q, 2 * l + 1, out))
            reads.append((k, 2 * l + 1, rv))
            continue
        U = tr.units[l]
        if kind == "error":  # a frozen constant vector: writes like a node, reads nothing
            q = r
            out = tr.err[l][q]
            nodes.append(Node(f"error/{l}/{q}", "error", l, 0, q, None, strs[q], float(vals[q]),
                              float(out @ d_dir) if q == s.pos else 0.0, float(out.norm()), None, group=U.number))
            outs.append((q, 2 * l + 2, out))
            reads.append(None)
            continue
        q, i = r // U.n, r % U.n
        out = tr.post[l][q, i] * U.W_out[i]
        rv = (tr.gamma[l][q, i] * bw.a[l][q, i] * centre(_f(w.ln2_w[l]) * U.W_in[:, i], cfg.norm)
              / tr.s2[l][q])
        if kind == "feature":
            nodes.append(Node(f"feature/{U.number}/{i}/{q}", "feature", l, i, q, None, strs[q], float(vals[q, i]),
                              float(out @ d_dir) if q == s.pos else 0.0, float(tr.post[l][q, i]),
                              lab.get(("feature", U.number, i)), group=U.number))
        else:
            nodes.append(Node(f"neuron/{l}/{i}/{q}", "neuron", l, i, q, None, strs[q], float(vals[q, i]),
                              float(out @ d_dir) if q == s.pos else 0.0, float(tr.post[l][q, i]),
                              lab.get(("neuron", l, i))))
        outs.append((q, 2 * l + 2, out))
        reads.append((q, 2 * l + 2, rv))
    tgt_str = token_str(model, s.target)
    nodes.append(Node("logit", "logit", L, s.target, s.pos, None, tgt_str, s.logit, s.logit, s.logit))
    outs.append(None)
    reads.append((s.pos, 2 * L + 1, d_dir))

    # ---- edges among kept nodes: weight = out_s . r_t where s writes where t reads, earlier in the model
    edges: list[Edge] = []
    src = [i for i, o in enumerate(outs) if o is not None]
    dst = [i for i, r in enumerate(reads) if r is not None]
    if src and dst:
        O = torch.stack([outs[i][2] for i in src])
        R = torch.stack([reads[i][2] for i in dst])
        W = O @ R.T
        dev = W.device
        wp = torch.tensor([outs[i][0] for i in src], device=dev)[:, None]
        ws = torch.tensor([outs[i][1] for i in src], device=dev)[:, None]
        rp = torch.tensor([reads[i][0] for i in dst], device=dev)[None]
        rs = torch.tensor([reads[i][1] for i in dst], device=dev)[None]
        W = torch.where((wp == rp) & (ws < rs), W, torch.zeros_like(W))
        aw = W.abs().flatten()
        keep = (aw > 0) & (aw >= edge_threshold) if edge_threshold > 0 else aw > 0
        eidx = keep.nonzero()[:, 0]
        eidx = eidx[aw[eidx].argsort(descending=True)]
        if max_edges is not None:
            eidx = eidx[:max_edges]
        for e in eidx.tolist():
            a, b = divmod(e, len(dst))
            edges.append(Edge(nodes[src[a]].id, nodes[dst[b]].id, float(W[a, b])))

    nodes.sort(key=lambda n: (n.stage, n.pos, -1 if n.src is None else n.src, n.index))
    return Graph(
        model=str(getattr(model, "source", "")), tokens=toks, token_strs=strs, pos=s.pos, target=s.target,
        target_str=tgt_str, contrast=s.contrast,
        contrast_str=token_str(model, s.contrast) if s.contrast is not None else None,
        logit=s.logit, constants=_direct_constants(w, s), bias_flow=bw.bias_flow, nodes=nodes, edges=edges, n_layers=L,
        n_candidates=n_candidates,
        settings=dict(max_nodes=max_nodes, max_edges=max_edges, node_threshold=node_threshold,
                      edge_threshold=edge_threshold, keep_inputs=keep_inputs,
                      **({"transcoders": [{"layer": t.layer, "number": t.number, "name": t.name}
                                          for t in s.transcoders.values()]} if s.transcoders else {})),
    )


def _direct_constants(w, s: _Setup) -> dict[str, float]:
    consts = {"b_U": s.u_bias, "ln_final.b": float(_f(w.lnf_b) @ s.u)}
    for l in range(w.cfg.n_layers):
        consts[f"blocks.{l}.attn.b_O"] = float(_f(w.b_O[l]) @ s.d)
        U = s.trace.units[l]
        consts[U.bias_names(l)[1]] = float(U.b_out @ s.d)
    return consts
