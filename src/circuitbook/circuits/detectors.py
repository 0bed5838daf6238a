"""Head detectors from activations: previous-token, duplicate-token and induction scores.

Input: ``n_seqs`` sequences ``[BOS] x_1..x_n x_1..x_n`` of n distinct random tokens repeated once
(:func:`repeated_random_tokens`). One forward pass taps every layer's attention pattern
(``blocks.{l}.attn.hook_pattern``) and nothing downstream of the last one. Scores are mean attention
probabilities, in [0, 1]:

    previous_token   query i attends to i - 1, over positions 2..2n (whose previous token is random, not BOS)
    duplicate_token  query in the repeat attends to the earlier copy of its own token (i -> i - n)
    induction        query in the repeat attends to the token *after* its earlier copy (i -> i - n + 1)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..model.forward import run
from .basis import CircuitError

NAMES = ("previous_token", "duplicate_token", "induction")


@dataclasses.dataclass
class DetectorScores:
    """previous_token, duplicate_token, induction: [n_layers, n_heads] mean attention on the target position.
    seq_len (n, half the random part), n_seqs and seed say what they were measured on."""

    previous_token: Tensor
    duplicate_token: Tensor
    induction: Tensor
    seq_len: int
    n_seqs: int
    seed: int

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)

    def best(self, name: str, n: int = 3) -> list[tuple[int, int, float]]:
        """The n highest-scoring heads (layer, head, score) for one detector."""
        s = self[name]
        order = s.flatten().argsort(descending=True)[:n].tolist()
        return [(i // s.shape[1], i % s.shape[1], float(s.flatten()[i])) for i in order]


def repeated_random_tokens(d_vocab: int, n_seqs: int, seq_len: int, seed: int = 0, bos_id: int | None = None,
                           exclude: tuple[int, ...] = ()) -> Tensor:
    """[n_seqs, (1 if bos) + 2 * seq_len] int64: BOS, then seq_len distinct random tokens, repeated."""
    allowed = torch.ones(d_vocab, dtype=torch.bool)
    allowed[[i for i in (*exclude, bos_id) if i is not None and 0 <= i < d_vocab]] = False
    pool = allowed.nonzero()[:, 0]
    if len(pool) < seq_len:
        raise CircuitError(f"vocabulary of {len(pool)} usable tokens is too small for {seq_len} distinct tokens")
    g = torch.Generator().manual_seed(seed)
    half = torch.stack([pool[torch.randperm(len(pool), generator=g)[:seq_len]] for _ in range(n_seqs)])
    seqs = torch.cat([half, half], 1)
    if bos_id is not None:
        seqs = torch.cat([torch.full((n_seqs, 1), bos_id, dtype=torch.long), seqs], 1)
    return seqs


@torch.inference_mode()
def detector_scores(model, n_seqs: int = 32, seq_len: int = 50, seed: int = 0, batch_size: int = 8,
                    bos_id: int | None = -1, exclude: tuple[int, ...] = ()) -> DetectorScores:
    """Run the detectors on ``model`` (a Model; or Weights, then pass ``bos_id`` explicitly).

    bos_id=-1 takes the model tokenizer's BOS (None: no BOS). Special tokens in ``exclude`` are not sampled.
    """
    weights = getattr(model, "weights", model)
    cfg = weights.cfg
    if bos_id == -1:
        tok = getattr(model, "tokenizer", None)
        bos_id = tok.bos_id if tok is not None else cfg.bos_token_id
    n_pos = (1 if bos_id is not None else 0) + 2 * seq_len
    if weights.W_pos is not None and n_pos > weights.W_pos.shape[0]:
        raise CircuitError(f"detector sequences of {n_pos} tokens exceed the model's {weights.W_pos.shape[0]} positions")
    tokens = repeated_random_tokens(cfg.d_vocab, n_seqs, seq_len, seed, bos_id, exclude)
    off = 1 if bos_id is not None else 0
    L, H, n = cfg.n_layers, cfg.n_heads, seq_len
    sums = torch.zeros(3, L, H, dtype=torch.float64)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    q_prev = torch.arange(off + 1, off + 2 * n) if off else torch.arange(1, 2 * n)
    q_rep = torch.arange(off + n, off + 2 * n)
    for s in range(0, n_seqs, batch_size):
        cache = run(weights, tokens[s:s + batch_size].to(weights.device), names)
        for l in range(L):
            p = cache[names[l]].double().cpu()  # [b, h, q, k]
            sums[0, l] += p[:, :, q_prev, q_prev - 1].sum((0, 2))
            sums[1, l] += p[:, :, q_rep, q_rep - n].sum((0, 2))
            sums[2, l] += p[:, :, q_rep, q_rep - n + 1].sum((0, 2))
    sums[0] /= n_seqs * len(q_prev)
    sums[1:] /= n_seqs * n
    return DetectorScores(sums[0].float(), sums[1].float(), sums[2].float(), seq_len, n_seqs, seed)
