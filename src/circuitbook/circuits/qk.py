"""QK circuits: which key tokens a query token attends to, and how much position matters.

Token QK circuit of head (l, h): ``S[q, k] = (embed[q] @ W_Q + b_Q) · (embed[k] @ W_K - mean_k) / attn_scale``
[d_vocab (query), d_vocab (key)], the attention score (pre-softmax) a query token gives a key token. Keys are
centred over the vocabulary because softmax ignores anything that depends on the query alone (b_K and the
query-only part drop out); each row therefore has mean zero. ``attn_scale`` is the model's own: sqrt(d_head)
for GPT-2/Llama, 1 for GPT-Neo (which does not scale). Rotary models: the token circuit is the score at
relative offset 0 (q and k unrotated); elsewhere rotary mixes in position, which this circuit ignores.

Positional QK profile (learned W_pos only): ``P[i, j]`` = the same score between the average token at
position i (query) and at position j (key) (``basis.pos``), row-centred over the keys a query can see.
``profile[δ]`` = mean over queries of ``P[i, i-δ]``: a previous-token head peaks at δ = 1.
``positional_share = var_pos / (var_pos + var_tok)``: how much of the score variation position explains,
against the token circuit's variation (computed exactly from the factored form).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from .basis import CircuitError, make_basis
from .ov import head_name
from .screened_topk import CircuitTops, factored_circuit_tops


def qk_factors(basis, layer: int, head: int) -> tuple[Tensor, Tensor]:
    """(Q [d_vocab, d_head], K [d_vocab, d_head]) with ``Q @ K.T`` the token QK circuit (keys centred,
    1/attn_scale folded into Q)."""
    b = make_basis(basis)
    b.check_head(layer, head)
    w = b.w
    Q = (b.embed @ w.W_Q[layer, head] + w.b_Q[layer, head]) / b.cfg.attn_scale
    K = b.embed @ w.W_K[layer, head]
    return Q, K - K.mean(0)


def qk_matrix(basis, layer: int, head: int) -> Tensor:
    """Dense token QK circuit [d_vocab (query), d_vocab (key)]: only for small vocabularies."""
    Q, K = qk_factors(basis, layer, head)
    return Q @ K.T


def qk_tops(basis, layer: int, head: int, k: int = 10, n_pairs: int = 100, bottom_pairs: bool = False,
            progress: Callable[[int], None] | None = None) -> CircuitTops:
    """Per query token its top-k keys, and the top-N (query, key) pairs overall."""
    Q, K = qk_factors(basis, layer, head)
    return factored_circuit_tops(head_name(layer, head), Q, K.T.contiguous(), k, n_pairs, bottom_pairs,
                                 progress=progress)


def token_score_variance(basis, layer: int, head: int) -> float:
    """Mean squared entry of the (row-centred) token QK circuit, exact via ``||Q K^T||_F^2 = tr(Q^T Q K^T K)``."""
    Q, K = (t.double() for t in qk_factors(basis, layer, head))
    return float(((Q.T @ Q) * (K.T @ K)).sum()) / (Q.shape[0] * K.shape[0])


@dataclasses.dataclass
class PositionalQK:
    """Positional QK of one head.

    scores [n_pos, n_pos]: P[query position, key position], row-centred over visible keys, NaN where masked.
    profile [max_offset + 1]: mean over queries of P[i, i - δ] for δ = 0..max_offset (NaN if never visible).
    var_pos, var_tok: mean squared (row-centred) positional / token score; positional_share = var_pos /
    (var_pos + var_tok).
    """

    scores: Tensor
    profile: Tensor
    var_pos: float
    var_tok: float

    @property
    def positional_share(self) -> float:
        return self.var_pos / max(1e-30, self.var_pos + self.var_tok)

    @property
    def preferred_offset(self) -> int:
        return int(torch.nan_to_num(self.profile, nan=-float("inf")).argmax())


def positional_qk(basis, layer: int, head: int, max_offset: int = 32) -> PositionalQK:
    """Positional QK profile from W_pos; raises CircuitError for rotary models (no W_pos: not applicable)."""
    b = make_basis(basis)
    b.check_head(layer, head)
    if b.pos is None:
        raise CircuitError("positional QK profile not applicable: the model uses rotary positions (no W_pos)")
    from ..model.forward import attention_mask

    w, cfg = b.w, b.cfg
    Q = (b.pos @ w.W_Q[layer, head] + w.b_Q[layer, head]) / cfg.attn_scale
    K = b.pos @ w.W_K[layer, head] + w.b_K[layer, head]
    n = Q.shape[0]
    mask = attention_mask(n, n, cfg.attn_types[layer], cfg.window)
    S = (Q @ K.T).masked_fill(~mask, float("nan"))
    S = S - S.nanmean(-1, keepdim=True)
    var_pos = float(torch.nanmean(S.double().pow(2).nanmean(-1)))
    idx = torch.arange(n)
    profile = torch.full((max_offset + 1,), float("nan"))
    for d in range(min(max_offset, n - 1) + 1):
        v = S[idx[d:], idx[d:] - d]
        v = v[~v.isnan()]
        if len(v):
            profile[d] = v.mean()
    return PositionalQK(S, profile, var_pos, token_score_variance(b, layer, head))
