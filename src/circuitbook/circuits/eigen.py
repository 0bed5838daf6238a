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
from .ov import ov_factors


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
    """Copying score and positive share of a spectrum (see the module docstring)."""
    a = eigenvalues.abs()
    tot = float(a.sum())
    if tot == 0:
        return EigenSummary(eigenvalues, 0.0, 0.0)
    return EigenSummary(eigenvalues, float(eigenvalues.real.sum()) / tot, float(a[eigenvalues.real > 0].sum()) / tot)


def factored_summary(A: Tensor, B: Tensor) -> EigenSummary:
    """The EigenSummary of the circuit ``A @ B``: every copying score in the package is computed here."""
    return summarize(factored_eigenvalues(A, B))


def ov_eigenvalues(basis, layer: int, head: int, full: bool = True, embed: Tensor | None = None,
                   unembed: Tensor | None = None) -> Tensor:
    """Nonzero eigenvalues of the head's OV circuit.

    full=True: the token circuit. By default it is the head's full OV circuit of :mod:`.ov`
    (:func:`~.ov.ov_factors`: ``embed @ W_V @ W_O @ W_U / s_final``, tokens through the norm); passing
    ``embed`` and/or ``unembed`` gives ``embed @ W_V @ W_O @ unembed`` (unembed defaults to ``W_U``, no norm
    scale), e.g. ``embed=w.W_E`` for TransformerLens' ``W_E @ OV @ W_U``. full=False: ``W_V @ W_O``
    [d_model, d_model]. The scale ``s_final`` multiplies every eigenvalue by the same positive constant, so
    copying scores do not depend on it.
    """
    return factored_eigenvalues(*_ov_eigen_factors(basis, layer, head, full, embed, unembed))


def _ov_eigen_factors(basis, layer: int, head: int, full: bool, embed: Tensor | None,
                      unembed: Tensor | None) -> tuple[Tensor, Tensor]:
    b = make_basis(basis)
    b.check_head(layer, head)
    w = b.w
    if not full:
        return w.W_V[layer, head], w.W_O[layer, head]
    if embed is None and unembed is None:
        return ov_factors(b, layer, head)
    E = b.embed if embed is None else embed
    U = w.W_U if unembed is None else unembed
    return E @ w.W_V[layer, head], w.W_O[layer, head] @ U


def qk_eigenvalues(basis, layer: int, head: int, full: bool = True, embed: Tensor | None = None) -> Tensor:
    """Nonzero eigenvalues of the head's QK circuit ``W_Q @ W_K^T`` (TransformerLens' QK: no biases, no
    1/attn_scale), full=True between tokens: ``embed @ W_Q @ W_K^T @ embed^T``. Positive mass means
    tokens attend to themselves (same-token attention)."""
    return factored_eigenvalues(*_qk_eigen_factors(basis, layer, head, full, embed))


def _qk_eigen_factors(basis, layer: int, head: int, full: bool, embed: Tensor | None) -> tuple[Tensor, Tensor]:
    b = make_basis(basis)
    b.check_head(layer, head)
    w = b.w
    if not full:
        return w.W_Q[layer, head], w.W_K[layer, head].T
    E = b.embed if embed is None else embed
    return E @ w.W_Q[layer, head], (E @ w.W_K[layer, head]).T


def ov_copying(basis, layer: int, head: int) -> EigenSummary:
    """Copying summary of the full OV circuit (tokens through the norm); what ``run_circuits`` stores as the
    head scores ``ov_copying`` / ``ov_positive_share``."""
    return factored_summary(*_ov_eigen_factors(basis, layer, head, True, None, None))


def qk_same_token(basis, layer: int, head: int) -> EigenSummary:
    """Same-token summary of the full QK circuit (positive: a token attends to copies of itself); what
    ``run_circuits`` stores as ``qk_same_token`` / ``qk_positive_share``."""
    return factored_summary(*_qk_eigen_factors(basis, layer, head, True, None))
