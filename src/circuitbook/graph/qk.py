"""QK attribution of head nodes: how much of why head (l, h) at query q attended to source k comes from
the tokens, from the positions, or from earlier layers.

The residual stream a layer-l head reads is split into parts ``c``: ``token`` (hook_embed), ``pos``
(hook_pos_embed) and ``rest`` (resid_pre minus both: earlier layers' outputs and biases; zero at layer 0).
Through the frozen ln1 (scale measured in the forward) each query / key vector is linear in the parts:

    q = sum_c P(c_q) / s_q * w1 @ W_Q  +  (b1 @ W_Q + b_Q)      ("bias" part), the same for k with W_K

so the attention score is exactly the sum of 16 part-pair terms ``score[q, k] = sum_{a, b} q_a . k_b /
attn_scale``. Softmax ignores a constant per query, so each term is **centred** at the pattern's average
over the keys the query sees: ``t(k) - sum_k' pattern[q, k'] t(k')``; the centred terms sum exactly to the
centred score, i.e. to how much more k is scored than the head's average key. They are grouped as

    token_token   (token, token): the token-token (content) term of the QK circuit
    positional    every pair with ``pos`` on one side and token / pos / bias on the other
    other         every pair with ``rest`` or (token|bias, bias)  (earlier layers and bias-only terms)

and ``shares`` are |group| / sum |groups|. Learned positional embeddings only (rotary mixes position into
q and k multiplicatively: GraphError).
"""

from __future__ import annotations

import dataclasses

import torch

from ..model.maths import centre
from .prompt import position, prompt_tokens, weights_of
from .types import Graph, GraphError

PARTS = ("token", "pos", "rest", "bias")


def _group(a: str, b: str) -> str:
    if (a, b) == ("token", "token"):
        return "token_token"
    if "rest" in (a, b):
        return "other"
    if "pos" in (a, b):
        return "positional"
    return "other"


@dataclasses.dataclass
class QKAttribution:
    layer: int
    head: int
    q: int
    k: int
    score: float  # the forward's attention score
    centred: float  # score minus its pattern-weighted mean over the keys q sees
    terms: dict[str, float]  # "a,b" -> centred term
    groups: dict[str, float]  # token_token / positional / other (centred, signed)

    @property
    def shares(self) -> dict[str, float]:
        tot = sum(abs(v) for v in self.groups.values()) or 1.0
        return {k: abs(v) / tot for k, v in self.groups.items()}


def qk_attribution(model, prompt, layer: int, head: int, q: int, k: int) -> QKAttribution:
    from ..model.forward import run

    w = weights_of(model)
    cfg = w.cfg
    if w.W_pos is None:
        raise GraphError("QK attribution needs learned positional embeddings (this model uses rotary or none)")
    if not 0 <= layer < cfg.n_layers or not 0 <= head < cfg.n_heads:
        raise GraphError(f"head L{layer}.{head} does not exist")
    toks = prompt_tokens(model, prompt)
    T = toks.numel()
    q, k = position(q, T), position(k, T)
    if k > q:
        raise GraphError(f"source {k} comes after query {q}: a causal head cannot read it")
    pre = f"blocks.{layer}."
    c = {n: v[0].float() for n, v in run(w, toks[None], ("hook_embed", pre + "hook_resid_pre",
                                                        pre + "ln1.hook_scale", pre + "attn.hook_attn_scores",
                                                        pre + "attn.hook_pattern")).items()}
    parts = {"token": c["hook_embed"], "pos": w.W_pos[:T].float()}
    parts["rest"] = c[pre + "hook_resid_pre"] - parts["token"] - parts["pos"]
    s = c[pre + "ln1.hook_scale"].reshape(T, 1)
    w1, b1 = w.ln1_w[layer].float(), w.ln1_b[layer].float()
    WQ, WK = w.W_Q[layer, head].float(), w.W_K[layer, head].float()
    bq, bk = w.b_Q[layer, head].float(), w.b_K[layer, head].float()
    Q = {p: centre(v, cfg.norm) / s * w1 @ WQ for p, v in parts.items()}
    K = {p: centre(v, cfg.norm) / s * w1 @ WK for p, v in parts.items()}
    Q["bias"] = (b1 @ WQ + bq).expand(T, -1)
    K["bias"] = (b1 @ WK + bk).expand(T, -1)
    patt = c[pre + "attn.hook_pattern"][head, q]  # [T]
    terms, groups = {}, {"token_token": 0.0, "positional": 0.0, "other": 0.0}
    for a in PARTS:
        for b in PARTS:
            t = (K[b] @ Q[a][q]).double() / cfg.attn_scale  # [T] over keys
            val = float(t[k] - (patt.double() * t).sum())
            terms[f"{a},{b}"] = val
            groups[_group(a, b)] += val
    score = float(c[pre + "attn.hook_attn_scores"][head, q, k])
    if score == float("-inf"):
        raise GraphError(f"head L{layer}.{head} cannot read source {k} from query {q} (outside its attention window)")
    sc = c[pre + "attn.hook_attn_scores"][head, q].double()
    seen = patt > 0
    centred = float(sc[k] - (patt.double()[seen] * sc[seen]).sum())
    return QKAttribution(layer, head, q, k, score, centred, terms, groups)


def graph_qk(model, g: Graph) -> dict[str, QKAttribution]:
    """QK attribution of every head node of ``g`` ({node id: QKAttribution})."""
    return {n.id: qk_attribution(model, g.tokens, n.layer, n.index, n.pos, n.src) for n in g.nodes
            if n.kind == "head" and n.src is not None}
