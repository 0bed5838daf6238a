"""Skip-trigrams "key ... query -> output" of one head, read off its QK and OV tops (Elhage et al. 2021).

The head attends from ``query`` to an earlier ``key`` (QK) and, having attended, moves ``key`` to the logits
as ``output`` (OV). We take the head's top QK (query, key) pairs and, for each key, its top OV outputs, and
rank the triples by ``score = (qk / qk_max) * (ov / ov_max)`` where qk_max / ov_max are the head's largest QK
pair score and OV pair value: 1.0 for a triple made of the head's strongest attention and strongest write.
Only positive QK scores and OV values take part (a triple the head neither attends to nor promotes is not one).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .screened_topk import CircuitTops


@dataclasses.dataclass
class SkipTrigrams:
    """Triples best first. key, query, output [n] int64 token ids; qk [n] attention score (query->key),
    ov [n] logit effect (key->output), score [n] in (0, 1] (see module docstring)."""

    key: Tensor
    query: Tensor
    output: Tensor
    qk: Tensor
    ov: Tensor
    score: Tensor

    def __len__(self) -> int:
        return len(self.score)

    def as_list(self) -> list[tuple[int, int, int, float]]:
        return list(zip(self.key.tolist(), self.query.tolist(), self.output.tolist(), self.score.tolist()))


def skip_trigrams(qk: CircuitTops, ov: CircuitTops, n: int = 50) -> SkipTrigrams:
    """Combine a head's QK tops (``qk.top_pairs``) with its OV tops (``ov.top`` rows) into the top-n triples."""
    qv, qq, qkey = qk.top_pairs.vals, qk.top_pairs.rows, qk.top_pairs.cols
    keep = qv > 0
    qv, qq, qkey = qv[keep], qq[keep], qkey[keep]
    ov_max = float(ov.top_pairs.vals[0]) if len(ov.top_pairs) else 0.0
    if len(qv) == 0 or ov_max <= 0:
        e = torch.zeros(0)
        return SkipTrigrams(e.long(), e.long(), e.long(), e, e, e)
    outs, ovv = ov.top.ids[qkey], ov.top.vals[qkey]  # [n_qk, k]
    m = ovv.shape[1]
    score = (qv[:, None] / qv[0]) * (ovv / ov_max)
    flat = score.flatten()
    valid = (ovv.flatten() > 0)
    order = torch.argsort(torch.where(valid, flat, torch.tensor(-float("inf"))), descending=True)
    order = order[: min(n, int(valid.sum()))]
    i, j = order // m, order % m
    return SkipTrigrams(qkey[i], qq[i], outs[i, j], qv[i], ovv[i, j], flat[order])
