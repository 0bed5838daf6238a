"""The direct path W_E -> (final norm) -> W_U: the model's bigram table and how much of its loss it explains.

The bigram table is exact for the direct path at an average position: row t holds the log-probabilities
``log_softmax(normalize(W_E[t] + mean W_pos) @ W_U + b_U)`` (see :mod:`.basis`) of the next token. With
attention and MLPs removed the model *is* this table (position by position), so
:func:`direct_path_loss` computes that model's loss with the real W_pos[p] at each position.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from ..model.maths import normalize
from .basis import Basis, make_basis
from .screened_topk import Pairs, RowTops, chunked_tops, factored_row_fn


@dataclasses.dataclass
class BigramTable:
    """Top next tokens of the direct path for every current token.

    top: RowTops ids/vals [d_vocab, k] — row = current token id, best next tokens first, vals are log-probs.
    pairs: Pairs of the N (current, next) token pairs with the highest log-prob.
    """

    top: RowTops
    pairs: Pairs


def bigram_logits(basis, tokens: Tensor | None = None) -> Tensor:
    """Direct-path logits [len(tokens), d_vocab] for the given current tokens (all tokens if None).

    Dense: meant for small vocabularies or a few rows."""
    b = make_basis(basis)
    e = b.embed if tokens is None else b.embed[tokens]
    return e @ b.w.W_U + b.w.b_U


def bigram_table(basis, k: int = 10, n_pairs: int = 100, progress: Callable[[int], None] | None = None) -> BigramTable:
    """Top-k next tokens (log-probs) per current token and the global top (current, next) pairs, chunked."""
    b = make_basis(basis)
    V = b.cfg.d_vocab
    fn = factored_row_fn(b.embed, b.w.W_U, b.w.b_U)

    def logp(start, stop):  # every chunk holds whole rows, so log_softmax is exact per chunk
        return fn(start, stop).log_softmax(-1)

    t = chunked_tops(logp, V, V, k=k, n_pairs=n_pairs, bottom=False, progress=progress)
    return BigramTable(t.top, t.top_pairs)


@dataclasses.dataclass
class DirectPathLoss:
    """Mean next-token loss (nats/token) on the same tokens of: the direct-path-only model (``direct``: attention
    and MLPs removed), the full model (``full``), and a uniform guess (``uniform`` = log d_vocab).
    ``explained`` = (uniform - direct) / (uniform - full): the share of the model's gain over a uniform guess
    that the bigrams alone achieve (NaN when the model does no better than uniform; negative when the direct
    path alone is worse than uniform)."""

    direct: float
    full: float
    uniform: float
    n_tokens: int

    @property
    def explained(self) -> float:
        gain = self.uniform - self.full
        return (self.uniform - self.direct) / gain if gain > 0 else float("nan")


@torch.inference_mode()
def direct_path_loss(basis, token_batches: Iterable, max_tokens: int = 50_000, full: bool = True) -> DirectPathLoss:
    """Loss of the direct-path-only model on ``token_batches`` (corpus ``Batch``es or (tokens, mask) pairs).

    Position p predicts token p+1 when both are real tokens. ``full`` also runs the real model for comparison.
    """
    from ..model.forward import log_probs

    b = make_basis(basis)
    cfg, w = b.cfg, b.w
    tot_d = tot_f = 0.0
    n = 0
    for batch in token_batches:
        tokens, mask = (batch.tokens, batch.mask) if hasattr(batch, "tokens") else batch
        T = tokens.shape[1]
        tgt, m = tokens[:, 1:], (mask[:, 1:] & mask[:, :-1])
        x = w.W_E[tokens[:, :-1]]
        if w.W_pos is not None:
            x = x + w.W_pos[:T - 1]
        x, flat_t = normalize(x, cfg.norm, cfg.eps)[m], tgt[m]  # only the positions that count
        for s in range(0, len(x), 1024):  # bound the [positions, d_vocab] logits
            lp = (x[s:s + 1024] @ w.W_U + w.b_U).log_softmax(-1)
            tot_d -= float(lp.gather(-1, flat_t[s:s + 1024, None]).double().sum())
        if full:
            tot_f -= float(log_probs(w, tokens)[m].double().sum())
        n += int(m.sum())
        if n >= max_tokens:
            break
    if n == 0:
        from .basis import CircuitError

        raise CircuitError("no next-token pairs to compute the direct-path loss on (empty corpus?)")
    return DirectPathLoss(tot_d / n, tot_f / n if full else float("nan"), math.log(cfg.d_vocab), n)
