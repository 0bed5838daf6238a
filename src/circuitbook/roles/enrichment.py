"""Class enrichment of selected token sets against a universe, with multiple-testing correction.

Setting: a universe of N vocabulary tokens (those seen often enough in the corpus), each with one class
(its dominant POS class). A unit selects K of them (the tokens that activate it most, or that it promotes
most). For each class c with M_c members in the universe, k_c of which are selected:

  log-odds ratio  LOR_c = log[(k + 1/2)(N - M - K + k + 1/2) / ((K - k + 1/2)(M - k + 1/2))]
                  (Haldane-Anscombe corrected, so empty cells stay finite)
  p-value         P[X >= k], X ~ Hypergeometric(N, M, K)  (one-sided Fisher exact test for over-representation)

Every p-value of one family (all units x classes of a run) is then corrected with Benjamini-Hochberg.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import hypergeom, poisson


@dataclasses.dataclass
class Enrichment:
    """Enrichment of many selections at once. Rows are selections (units), columns the classes.

    k [n, C] selected tokens per class; K [n] selection sizes; M [C] universe tokens per class; N universe
    size; log_odds [n, C]; p [n, C] one-sided hypergeometric p-values (1.0 where k == 0).
    """

    k: np.ndarray
    K: np.ndarray
    M: np.ndarray
    N: int
    log_odds: np.ndarray
    p: np.ndarray


def class_counts(selected: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """selected [n, N] bool, classes [N] int in [0, n_classes) -> k [n, n_classes] counts."""
    onehot = np.zeros((classes.shape[0], n_classes), dtype=np.int64)
    onehot[np.arange(classes.shape[0]), classes] = 1
    return selected.astype(np.int64) @ onehot


def enrichment(selected: np.ndarray, classes: np.ndarray, n_classes: int) -> Enrichment:
    """Enrichment of each row of ``selected`` [n, N] (bool) for each class of ``classes`` [N]."""
    onehot = np.zeros((n_classes, classes.shape[0]), dtype=bool)
    onehot[classes, np.arange(classes.shape[0])] = True
    return target_enrichment(selected, onehot)


def target_enrichment(selected: np.ndarray, masks: np.ndarray) -> Enrichment:
    """Enrichment of each row of ``selected`` [n, N] (bool) for each target of ``masks`` [T, N] (bool; targets
    may overlap, e.g. a class and the unions holding it): the columns of the result are the targets."""
    k = selected.astype(np.int64) @ masks.T.astype(np.int64)
    K = selected.sum(1).astype(np.int64)
    M = masks.sum(1).astype(np.int64)
    N = int(masks.shape[1])
    Kb, Mb = K[:, None], M[None, :]
    lor = (np.log(k + 0.5) + np.log(N - Mb - Kb + k + 0.5)
           - np.log(Kb - k + 0.5) - np.log(Mb - k + 0.5))
    p = np.where(k > 0, hypergeom.sf(k - 1, N, Mb, Kb), 1.0)
    return Enrichment(k, K, M, N, lor, np.clip(p, 0.0, 1.0))


def overlap_p(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared members of two selections per row: a, b [n, N] bool -> (overlap [n], p [n]) where p is the
    hypergeometric probability of an overlap at least this large if b were drawn at random."""
    ov = (a & b).sum(1)
    N = a.shape[1]
    p = np.where(ov > 0, hypergeom.sf(ov - 1, N, a.sum(1), b.sum(1)), 1.0)
    return ov, np.clip(p, 0.0, 1.0)


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values for a family of p-values (any shape; NaN-free)."""
    flat = np.asarray(p, dtype=np.float64).ravel()
    m = flat.size
    if m == 0:
        return flat.reshape(np.shape(p))
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out.reshape(np.shape(p))


def stratified_enrichment(selected: np.ndarray, masks: np.ndarray, stratum: np.ndarray) -> Enrichment:
    """Target enrichment of selections that favour some strata (activation sets favour frequent tokens): the
    null draws each selected token's replacement from its own stratum (``stratum`` [N], e.g. frequency bins).
    Expected count of target t: lam = sum_s K_s M_ts / N_s; p = P[Poisson(lam) >= k], a conservative tail for
    the sum of per-stratum hypergeometrics; log-odds of k against lam (Haldane-corrected), so a set of
    frequent function words is measured against the frequent tokens' classes, not the whole universe's."""
    S = int(stratum.max()) + 1
    onehot = np.zeros((masks.shape[1], S))
    onehot[np.arange(masks.shape[1]), stratum] = 1.0
    N_s = onehot.sum(0)
    K_s = selected.astype(np.float64) @ onehot  # [n, S]
    M_ts = masks.astype(np.float64) @ onehot  # [T, S]
    lam = K_s @ (M_ts / np.maximum(N_s, 1)).T  # [n, T]
    k = selected.astype(np.int64) @ masks.T.astype(np.int64)
    K = selected.sum(1).astype(np.int64)
    Kb = K[:, None]
    lor = np.log(k + 0.5) + np.log(Kb - lam + 0.5) - np.log(Kb - k + 0.5) - np.log(lam + 0.5)
    p = np.where(k > 0, poisson.sf(k - 1, np.maximum(lam, 1e-12)), 1.0)
    return Enrichment(k, K, masks.sum(1).astype(np.int64), int(masks.shape[1]), lor, np.clip(p, 0.0, 1.0))
