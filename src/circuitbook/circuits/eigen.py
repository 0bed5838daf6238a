"""Eigenvalues of OV and QK circuits through their factored form, and the copying score.

A circuit ``A @ B`` with A [n, r], B [r, n] (r = d_head, n = d_vocab or d_model) has the same nonzero
eigenvalues as the small ``B @ A`` [r, r], so a 50257 x 50257 circuit costs an r x r eigendecomposition.

Copying score (Elhage et al. 2021, "A Mathematical Framework"): ``sum(Re λ) / sum(|λ|)``, in [-1, 1]: near 1
when the circuit maps tokens onto themselves (copying), near -1 when it suppresses them.
``positive_share``: the share of eigenvalue mass (|λ|) on eigenvalues with positive real part.
Both are 0 for a circuit without eigenvalue mass (nilpotent, e.g. a head that maps b -> c only).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .basis import make_basis


@dataclasses.dataclass
class EigenSummary:
    """eigenvalues [r] complex128, ordered by |λ| descending; copying = sum(Re λ)/sum(|λ|);
    positive_share = sum(|λ| where Re λ > 0)/sum(|λ|)."""

    eigenvalues: Tensor
    copying: float
    positive_share: float


def factored_eigenvalues(A: Tensor, B: Tensor, rtol: float = 1e-6) -> Tensor:
    """The eigenvalues of ``A @ B`` that can be nonzero (those of ``B @ A``), complex128, by |λ| descending.

    Eigenvalues below ``rtol * ||A @ B||_F`` are rounding noise of a zero eigenvalue and are set to 0 (so a
    circuit with no eigenvalue mass, e.g. one mapping b -> c only, gets copying score 0, not a random sign).
    """
    A, B = A.double(), B.double()
    ev = torch.linalg.eigvals(B @ A)
    frob = float(((A.T @ A) * (B @ B.T)).sum().clamp_min(0).sqrt())  # ||A B||_F without forming A B
    ev = torch.where(ev.abs() < rtol * frob, torch.zeros_like(ev), ev)
    return ev[ev.abs().argsort(descending=True)]


def summarize(eigenvalues: Tensor) -> EigenSummary:
    a = eigenvalues.abs()
    tot = float(a.sum())
    if tot == 0:
        return EigenSummary(eigenvalues, 0.0, 0.0)
    return EigenSummary(eigenvalues, float(eigenvalues.real.sum()) / tot, float(a[eigenvalues.real > 0].sum()) / tot)


def ov_eigenvalues(basis, layer: int, head: int, full: bool = True, embed: Tensor | None = None,
                   unembed: Tensor | None = None) -> Tensor:
    """Nonzero eigenvalues of the head's OV circuit.

    full=True: the token circuit ``embed @ W_V @ W_O @ W_U`` (embed defaults to the basis' tokens through the
    norm; pass ``w.W_E`` for TransformerLens' ``W_E @ OV @ W_U``); full=False: ``W_V @ W_O`` [d_model, d_model].
    """
    b = make_basis(basis)
    b.check_head(layer, head)
    w = b.w
    if not full:
        return factored_eigenvalues(w.W_V[layer, head], w.W_O[layer, head])
    E = b.embed if embed is None else embed
    U = w.W_U if unembed is None else unembed
    return factored_eigenvalues(E @ w.W_V[layer, head], w.W_O[layer, head] @ U)


def qk_eigenvalues(basis, layer: int, head: int, full: bool = True, embed: Tensor | None = None) -> Tensor:
    """Nonzero eigenvalues of the head's QK circuit ``W_Q @ W_K^T`` (TransformerLens' QK: no biases, no
    1/attn_scale), full=True between tokens: ``embed @ W_Q @ W_K^T @ embed^T``. Positive mass means
    tokens attend to themselves (same-token attention)."""
    b = make_basis(basis)
    b.check_head(layer, head)
    w = b.w
    if not full:
        return factored_eigenvalues(w.W_Q[layer, head], w.W_K[layer, head].T)
    E = b.embed if embed is None else embed
    return factored_eigenvalues(E @ w.W_Q[layer, head], (E @ w.W_K[layer, head]).T)


def ov_copying(basis, layer: int, head: int) -> EigenSummary:
    """Copying summary of the full OV circuit (tokens through the norm)."""
    return summarize(ov_eigenvalues(basis, layer, head))


def qk_same_token(basis, layer: int, head: int) -> EigenSummary:
    """Same-token summary of the full QK circuit (positive: a token attends to copies of itself)."""
    return summarize(qk_eigenvalues(basis, layer, head))
