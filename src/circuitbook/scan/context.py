"""One batch as the scan sees it: which positions count, their corpus keys, and context windows.

Position 0 of every sequence is the BOS separator the corpus reader adds: its activations are the same
in every sequence (same token, same position, nothing before it), so the scan leaves it out of every
statistic and example (it still shows inside context windows). Padding is left out too.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .mergeable_topk import example_key


@dataclasses.dataclass
class BatchContext:
    """tokens [B, T] int64; lengths [B]; rows [M] flat indices b*T + t of the counted positions, in corpus
    order; keys [M] int64 example keys (topk.example_key) of those positions; before/after: window size."""

    tokens: Tensor
    lengths: Tensor
    rows: Tensor
    keys: Tensor
    before: int
    after: int

    @property
    def width(self) -> int:
        return self.before + 1 + self.after

    @classmethod
    def build(cls, tokens: Tensor, mask: Tensor, story: Tensor, window: Tensor, max_len: int,
              before: int, after: int) -> "BatchContext":
        """``window`` w of a story covers story tokens [w*(max_len-1), (w+1)*(max_len-1)) after its BOS."""
        B, T = tokens.shape
        counted = mask.clone()
        counted[:, 0] = False
        rows = counted.reshape(-1).nonzero()[:, 0]
        b, t = rows // T, rows % T
        offset = window[b] * (max_len - 1) + t - 1
        return cls(tokens, mask.sum(1), rows, example_key(story[b], offset), before, after)

    def window_positions(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For focus positions ``flat`` [s] (b*T + t): (b [s], t_j [s, W] clamped positions, ok [s, W])."""
        T = self.tokens.shape[1]
        b, t = flat // T, flat % T
        tj = t[:, None] - self.before + torch.arange(self.width, device=flat.device)[None]
        ok = (tj >= 0) & (tj < self.lengths[b][:, None])
        return b, tj.clamp(0, T - 1), ok

    def window_tokens(self, flat: Tensor, where: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """[s, W] int32 token ids around each focus (-1 outside the sequence); ``where``: the focus's
        window_positions if already computed."""
        b, tj, ok = where if where is not None else self.window_positions(flat)
        T = self.tokens.shape[1]
        tok = self.tokens.reshape(-1).index_select(0, (b[:, None] * T + tj).reshape(-1)).view(tj.shape).to(torch.int32)
        return tok.masked_fill_(~ok, -1)
