"""Q-, K- and V-composition between heads of different layers, and virtual-head OV circuits.

Composition score (Elhage et al. 2021; TransformerLens' ``all_composition_scores``), for a writer head
(l1, h1) and a reader head (l2, h2) with l1 < l2, on the processed weights:

    score = ||OV_1 @ M_2||_F / (||OV_1||_F * ||M_2||_F),   OV_1 = W_V1 @ W_O1   [d_model, d_model]
    Q: M_2 = W_Q2 @ W_K2^T     K: M_2 = (W_Q2 @ W_K2^T)^T     V: M_2 = W_V2 @ W_O2

computed through d_head x d_head Gram matrices (never a d_model x d_model product):
``||X F Y^T||_F^2 = tr(F^T (X^T X) F (Y^T Y))``. A head whose OV (or QK) circuit is zero (pruned, ablated)
composes with nothing: its scores are defined as 0 (the formula's 0/0; TransformerLens gives NaN).

A virtual head (l1, h1) -> (l2, h2) is the path through both OV circuits: its token circuit is
``embed @ W_V1 @ W_O1 / s_ln1[l2] @ W_V2 @ W_O2 @ W_U / s_final`` (source -> output, per unit attention of
both heads), reduced like any OV circuit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from .basis import make_basis
from .eigen import EigenSummary, factored_summary
from .ov import head_name
from .screened_topk import CircuitTops, factored_circuit_tops

MODES = ("Q", "K", "V")


@dataclasses.dataclass
class CompositionScores:
    """q, k, v: [n_layers, n_heads, n_layers, n_heads] float64; ``x[l1, h1, l2, h2]`` is how much reader head
    (l2, h2) composes with writer head (l1, h1); zero unless l1 < l2 (TransformerLens' layout)."""

    q: Tensor
    k: Tensor
    v: Tensor

    def __getitem__(self, mode: str) -> Tensor:
        return {"Q": self.q, "K": self.k, "V": self.v}[mode.upper()]

    def strongest(self, mode: str, n: int = 10) -> list[tuple[int, int, int, int, float]]:
        """The n strongest (l1, h1, l2, h2, score) pairs for one mode, strongest first."""
        s = self[mode]
        flat = s.flatten()
        order = flat.argsort(descending=True)[: n]
        L, H = s.shape[:2]
        out = []
        for i in order.tolist():
            if flat[i] <= 0:
                break
            l1, r = divmod(i, H * L * H)
            h1, r = divmod(r, L * H)
            l2, h2 = divmod(r, H)
            out.append((l1, h1, l2, h2, float(flat[i])))
        return out


def _frob2(X: Tensor, F: Tensor, Y: Tensor) -> Tensor:
    """||X_i F_ij Y_j^T||_F^2 for batched X [..., d, e], F [..., e, f], Y [..., d', f] (broadcasting)."""
    GX, GY = X.mT @ X, Y.mT @ Y
    return ((GX @ F) * (F @ GY)).sum((-2, -1))


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den is 0 (then num, a norm of a product with the zero factor, is 0 too)."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def composition_scores(weights) -> CompositionScores:
    """All Q/K/V composition scores of a model (Model, Weights or Basis; processed weights are used)."""
    w = make_basis(weights).w
    L, H = w.cfg.n_layers, w.cfg.n_heads
    WQ, WK, WV, WO = (t.double() for t in (w.W_Q, w.W_K, w.W_V, w.W_O))
    out = {m: torch.zeros(L, H, L, H, dtype=torch.float64) for m in MODES}
    ov_norm = _frob2(WV, torch.eye(WV.shape[-1], dtype=torch.float64), WO.mT).sqrt()  # [L, H]
    qk_norm = _frob2(WQ, torch.eye(WQ.shape[-1], dtype=torch.float64), WK).sqrt()
    for l1 in range(L):
        X = WV[l1][:, None]  # writer: OV_1 = X_1 @ W_O1
        for l2 in range(l1 + 1, L):
            # OV_1 @ W_Q2 W_K2^T = W_V1 (W_O1 W_Q2) W_K2^T
            q = _frob2(X, WO[l1][:, None] @ WQ[l2][None], WK[l2][None])
            k = _frob2(X, WO[l1][:, None] @ WK[l2][None], WQ[l2][None])
            v = _frob2(X, WO[l1][:, None] @ WV[l2][None], WO[l2].mT[None])
            den_qk = ov_norm[l1][:, None] * qk_norm[l2][None]
            out["Q"][l1, :, l2] = _ratio(q.sqrt(), den_qk)
            out["K"][l1, :, l2] = _ratio(k.sqrt(), den_qk)
            out["V"][l1, :, l2] = _ratio(v.sqrt(), ov_norm[l1][:, None] * ov_norm[l2][None])
    return CompositionScores(out["Q"], out["K"], out["V"])


@dataclasses.dataclass
class VirtualHead:
    """The OV path (l1, h1) -> (l2, h2): ``tops`` (CircuitTops named "L{l1}H{h1}>L{l2}H{h2}", rows = source
    token), ``eigen`` its copying summary, ``v_score`` the V-composition score of the pair."""

    l1: int
    h1: int
    l2: int
    h2: int
    v_score: float
    tops: CircuitTops
    eigen: EigenSummary


def virtual_ov_factors(basis, l1: int, h1: int, l2: int, h2: int) -> tuple[Tensor, Tensor]:
    """(A [d_vocab, d_head], B [d_head, d_vocab]) with ``A @ B`` the virtual head's full OV circuit."""
    b = make_basis(basis)
    b.check_head(l1, h1)
    b.check_head(l2, h2)
    if l1 >= l2:
        from .basis import CircuitError

        raise CircuitError(f"a virtual head needs the writer before the reader, got layers {l1} -> {l2}")
    w, s = b.w, b.scales
    A = (b.embed @ w.W_V[l1, h1]) @ (w.W_O[l1, h1] @ w.W_V[l2, h2]) / s.ln1[l2]
    return A, (w.W_O[l2, h2] @ w.W_U) / s.final


def virtual_head(basis, l1: int, h1: int, l2: int, h2: int, k: int = 10, n_pairs: int = 100,
                 v_score: float = float("nan"), progress: Callable[[int], None] | None = None) -> VirtualHead:
    A, B = virtual_ov_factors(basis, l1, h1, l2, h2)
    name = f"{head_name(l1, h1)}>{head_name(l2, h2)}"
    tops = factored_circuit_tops(name, A, B, k, n_pairs, bottom_pairs=True, progress=progress)
    return VirtualHead(l1, h1, l2, h2, v_score, tops, factored_summary(A, B))
