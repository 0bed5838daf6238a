"""OV circuits: what a head writes to the logits when it attends to a token.

Full OV circuit of head (l, h):  ``embed @ W_V[l, h] @ W_O[l, h] @ W_U / s_final``  [d_vocab (source), d_vocab
(output)], in logits per unit of attention on the source token (see :mod:`.basis` for ``embed`` and the
final-norm scale). b_V is left out: with attention summing to one it adds the same vector whatever the source.
For heads after layer 0, ``embed`` is the direct-path input (token + position only).

The 50257 x 50257 matrix is never built: it is the product of ``A = embed @ W_V`` [d_vocab, d_head] and
``B = W_O @ W_U`` [d_head, d_vocab], reduced in row chunks (:mod:`.topk`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .basis import make_basis
from .screened_topk import CircuitTops, factored_circuit_tops


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def ov_factors(basis, layer: int, head: int, sources: Tensor | None = None,
               outputs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(A [d_vocab, d_head], B [d_head, d_vocab]) with ``A @ B`` the full OV circuit (rows = source token);
    only the rows of token ids ``sources`` / the columns of ``outputs`` when given."""
    b = make_basis(basis)
    b.check_head(layer, head)
    w = b.w
    E = b.embed if sources is None else b.embed[torch.as_tensor(sources, device=b.embed.device)]
    W_U = w.W_U if outputs is None else w.W_U[:, torch.as_tensor(outputs, device=w.W_U.device)]
    return E @ w.W_V[layer, head], (w.W_O[layer, head] @ W_U) / b.scales.final


def ov_matrix(basis, layer: int, head: int) -> Tensor:
    """The dense full OV circuit [d_vocab, d_vocab]: only for small vocabularies."""
    A, B = ov_factors(basis, layer, head)
    return A @ B


def ov_tops(basis, layer: int, head: int, k: int = 10, n_pairs: int = 100, bottom_pairs: bool = True,
            progress: Callable[[int], None] | None = None) -> CircuitTops:
    """Per source token its top-k promoted outputs, and the top/bottom-N (source, output) pairs overall."""
    A, B = ov_factors(basis, layer, head)
    return factored_circuit_tops(head_name(layer, head), A, B, k, n_pairs, bottom_pairs, progress=progress)
