"""Result types shared by the neuron analyses: one unit's effect over the vocabulary, and a layer's worth."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .screened_topk import RowTops


@dataclasses.dataclass
class TokenEffect:
    """One unit's effect over the vocabulary along one path.

    top_ids / top_vals [k]: the tokens with the largest values, largest first.
    bottom_ids / bottom_vals [k]: the tokens with the smallest values, smallest first.
    norm: L2 norm of the whole [d_vocab] effect vector (how strong the path is).
    via: None for the direct path, else (layer, head) of the head the path goes through.
    """

    top_ids: Tensor
    top_vals: Tensor
    bottom_ids: Tensor
    bottom_vals: Tensor
    norm: float
    via: tuple[int, int] | None = None


@dataclasses.dataclass
class LayerEffects:
    """Token effects of every neuron of one layer along one path.

    top / bottom: RowTops ids/vals [d_mlp, k] (row = neuron index), largest (smallest) first.
    norms [d_mlp]: L2 norm of each neuron's [d_vocab] effect vector.
    """

    layer: int
    via: tuple[int, int] | None
    top: RowTops
    bottom: RowTops
    norms: Tensor

    def neuron(self, idx: int) -> TokenEffect:
        return TokenEffect(self.top.ids[idx], self.top.vals[idx], self.bottom.ids[idx], self.bottom.vals[idx],
                           float(self.norms[idx]), self.via)


def effect_from_vector(v: Tensor, k: int, via=None) -> TokenEffect:
    """TokenEffect of one dense [d_vocab] vector."""
    k = min(k, len(v))
    t, b = v.topk(k), v.topk(k, largest=False)
    return TokenEffect(t.indices, t.values, b.indices, b.values, float(v.norm()), via)
