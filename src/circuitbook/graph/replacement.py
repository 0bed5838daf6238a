"""A transcoder in place of a layer's MLP, as the attribution graph reads it (:class:`Transcoder`).

The graph stage sits left of ``dictionary/`` (``docs/architecture.md``), so it does not load dictionaries:
``circuitbook.dictionary.graph.graph_transcoder`` turns a stored dictionary into this plain record, and
:func:`~.attribution.attribute` takes it as ``transcoders=[...]``. The record is what the maths needs:

    W_enc [d_model, n]   b_enc [n]     pre = LN2(resid_mid) @ W_enc + b_enc      (the MLP's input, ln2's output)
    W_dec [n, d_model]   b_dec [d_model]   out = act(pre) @ W_dec + b_dec
    activate(pre) -> act(pre)   (TopK / ReLU / JumpReLU: every one is ``pre * gate`` with gate 0 or 1)

In the graph a transcoder's layer has one **feature node** per active feature and position
(``feature/{number}/{idx}/{q}``: ``act[q, idx] * W_dec[idx]``) and one **error node** per position
(``error/{layer}/{q}``: the MLP's true output minus the transcoder's output, ``mlp_out[q] - out[q]``, frozen
like a bias). With the error node the layer writes exactly what the MLP wrote, so the forward's logit and
every conservation sum of :mod:`.attribution` stay exact. Feature activations are linearised like neuron
activations: ``act = gamma * pre`` with ``gamma = act / pre`` frozen (1 for a feature that fires, 0 else).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from .types import GraphError


@dataclasses.dataclass(frozen=True)
class Transcoder:
    """One transcoder standing in for the MLP of ``layer`` (see the module docstring for the maths)."""

    layer: int
    """The model layer whose MLP it replaces."""
    number: int
    """The dictionary's number in the book: the group of its units, ``feature/{number}/{idx}``."""
    name: str
    """The dictionary's name (for messages and the graph's settings)."""
    W_enc: Tensor
    """[d_model, n] encoder (reads ln2's output)."""
    b_enc: Tensor
    """[n] encoder bias."""
    W_dec: Tensor
    """[n, d_model] decoder rows: what one unit of a feature's activation writes."""
    b_dec: Tensor
    """[d_model] decoder bias (a constant of the graph, like the MLP's b_out)."""
    activate: Callable[[Tensor], Tensor]
    """Pre-activations [..., n] -> activations [..., n]."""

    @property
    def n_features(self) -> int:
        return int(self.W_dec.shape[0])

    def check(self, cfg) -> None:
        """GraphError unless this transcoder fits the model described by ``cfg`` (one clear line)."""
        what = f"transcoder {self.name!r}"
        if not 0 <= self.layer < cfg.n_layers:
            raise GraphError(f"{what} replaces layer {self.layer}, but the model has {cfg.n_layers} layer(s)")
        n = self.n_features
        shapes = {"W_enc": (cfg.d_model, n), "b_enc": (n,), "W_dec": (n, cfg.d_model), "b_dec": (cfg.d_model,)}
        for field, want in shapes.items():
            got = tuple(getattr(self, field).shape)
            if got != want:
                raise GraphError(f"{what}: {field} has shape {got}, expected {want} (the model's d_model is "
                                 f"{cfg.d_model})")

    def to(self, device) -> "Transcoder":
        return dataclasses.replace(self, **{f: getattr(self, f).to(device).float()
                                            for f in ("W_enc", "b_enc", "W_dec", "b_dec")})


def by_layer(transcoders, cfg) -> dict[int, Transcoder]:
    """{layer: Transcoder} from None, one Transcoder or an iterable of them; checked against ``cfg``."""
    if transcoders is None:
        return {}
    if isinstance(transcoders, Transcoder):
        transcoders = [transcoders]
    out: dict[int, Transcoder] = {}
    for t in transcoders:
        if not isinstance(t, Transcoder):
            raise GraphError(f"transcoders must be graph.replacement.Transcoder records, not {type(t).__name__}")
        t.check(cfg)
        if t.layer in out:
            raise GraphError(f"two transcoders replace layer {t.layer} ({out[t.layer].name!r}, {t.name!r})")
        out[t.layer] = t
    return out


def frozen_gate(pre: Tensor, act: Tensor) -> Tensor:
    """gamma with act == gamma * pre (0 where pre is 0: then act is 0 for every activation used here)."""
    ok = pre.abs() > 1e-20
    return torch.where(ok, act / torch.where(ok, pre, torch.ones_like(pre)), torch.zeros_like(pre))
