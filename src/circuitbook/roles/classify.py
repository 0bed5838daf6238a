"""Type every neuron: syntax (a class -> class rule), content (a semantic cluster), mixed, or unclear.

For each unit (neuron, layer-major) and a universe of N tokens (see ``scores.Universe``):

1. Selections. The *input set* is the tokens that activate the unit most (activation means from the corpus;
   the direct-path input effect when no activations are available); the *output set* the tokens it promotes
   most (direct logit effect). A set is every token scoring >= ``tau`` x the unit's best score, clipped to
   [k_min, k_max] tokens, so a selective unit gets a small, clean set.
2. Syntax evidence. Class enrichment (``enrichment.py``: log-odds, hypergeometric p, Benjamini-Hochberg over
   all units x classes) of the input set, and of the output set *minus the tokens it shares with the input
   set* (a unit that reads and writes the same words is a content unit, not a VERB -> VERB rule). A class is
   significant when q < alpha, log-odds >= min_log_odds and it holds >= 2 selected tokens. A rule needs a
   significant class on both sides: "PRON -> VERB", "DET -> NOUN/ADJ" (classes by selected count).
3. Content evidence, all "beyond syntax":
   * overlap — the input and output sets share tokens (hypergeometric p);
   * coherence — mean pairwise cosine of the set's token embeddings (W_E rows, centred over the universe,
     unit norm) against a null of random sets with the *same fine POS tags* (Penn Treebank tags drawn from
     the universe, ``n_null`` draws with replacement: a conservative null), as z = (obs - null mean) / null sd
     and p from the normal tail; on the input and on the output set.
   p_content = 3 x min(p_overlap, p_coh_in, p_coh_out) (Bonferroni), then BH over units. Content needs
   q < alpha and an effect: >= 2 shared tokens or a coherence z >= min_z.
4. Type: syntax and content -> mixed; only syntax -> syntax; only content -> content; neither -> unclear.
   confidence = 1 - q of the weakest test the verdict rests on (for unclear: the smaller of the syntax and
   content q-values, i.e. how far the strongest hint is from significance). score = -log10 of that q
   (capped at 300), used to rank the strongest examples.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.stats import hypergeom, norm, poisson

from .enrichment import bh, enrichment
from .pos import CLASSES
from .scores import Universe

TYPES = ("syntax", "content", "mixed", "unclear")


@dataclasses.dataclass
class Settings:
    tau: float = 0.5
    k_min: int = 3
    k_max: int = 30
    alpha: float = 0.05
    min_log_odds: float = 1.0
    min_z: float = 3.0
    n_null: int = 128
    seed: int = 0
    n_show: int = 12  # tokens kept as evidence per side


@dataclasses.dataclass
class UnitType:
    """The verdict on one neuron. ``rule`` is "" unless type is syntax or mixed; ``evidence`` is a JSON-able
    dict (input/output sets with their class enrichment, content measures; see ``classify``)."""

    layer: int
    idx: int
    type: str
    rule: str
    confidence: float
    score: float
    evidence: dict


def select(scores: np.ndarray, tau: float, k_min: int, k_max: int) -> np.ndarray:
    """scores [n, N] -> bool [n, N]: per row the tokens scoring >= tau * row max (and > 0), at least k_min and
    at most k_max of them (ties broken by universe order)."""
    n, N = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    top = np.take_along_axis(scores, order, 1)
    best = top[:, :1]
    K = ((top >= tau * best) & (top > 0)).sum(1)
    K = np.clip(K, min(k_min, N), min(k_max, N))
    sel = np.zeros((n, N), dtype=bool)
    rank = np.arange(N)[None, :] < K[:, None]
    np.put_along_axis(sel, order, rank, 1)
    return sel


def unit_embeddings(W_E: np.ndarray) -> np.ndarray:
    """[N, d] universe token embeddings, centred over the universe and scaled to unit norm."""
    x = W_E - W_E.mean(0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def strata(U: Universe, n_bins: int | None = None, min_size: int = 3, by_class: bool = True) -> np.ndarray:
    """[N] stratum id of each universe token: its class (if ``by_class``) x a corpus-frequency bin (quantiles
    of log count). ``n_bins`` defaults to one bin per 200 universe tokens, at most 5: a small vocabulary has
    too few tokens to match frequencies.
    Nulls draw replacements within a stratum, so they keep both the syntax and the frequency of a set (token
    embeddings encode frequency strongly; frequent tokens look alike). Strata smaller than ``min_size`` fall
    back to the class alone."""
    n_bins = n_bins or int(np.clip(len(U) // 200, 1, 5))
    logc = np.log(U.counts.astype(np.float64))
    edges = np.quantile(logc, np.linspace(0, 1, n_bins + 1)[1:-1])
    fbin = np.searchsorted(edges, logc, side="right")
    sid = (U.cls if by_class else np.zeros_like(U.cls)) * n_bins + fbin
    small = np.isin(sid, np.flatnonzero(np.bincount(sid) < min_size))
    sid[small] = len(CLASSES) * n_bins + U.cls[small]
    return np.unique(sid, return_inverse=True)[1]


def overlap_null(sel_in: np.ndarray, sel_out: np.ndarray, stratum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared tokens of the input and output sets, and the p-value of at least that many if every output
    token were replaced by a random token of its stratum: Poisson with mean sum_j |in & stratum(j)| / |stratum(j)|."""
    S = stratum.max() + 1
    size = np.bincount(stratum, minlength=S)
    onehot = np.zeros((len(stratum), S))
    onehot[np.arange(len(stratum)), stratum] = 1.0
    in_per = sel_in @ onehot  # [n, S] input tokens in each stratum
    out_per = sel_out @ onehot
    lam = (in_per * out_per / np.maximum(size, 1)).sum(1)
    ov = (sel_in & sel_out).sum(1)
    if S == 1:  # one stratum: the exact hypergeometric tail
        p = np.where(ov > 0, hypergeom.sf(ov - 1, len(stratum), sel_in.sum(1), sel_out.sum(1)), 1.0)
    else:
        p = np.where(ov > 0, poisson.sf(ov - 1, np.maximum(lam, 1e-12)), 1.0)
    return ov, np.clip(p, 0.0, 1.0)


def cross_coherence(sel_a: np.ndarray, sel_b: np.ndarray, emb: np.ndarray, stratum: np.ndarray, n_null: int,
                    seed: int) -> dict[str, np.ndarray]:
    """Mean cosine between the members of set A and of set B (pairs of distinct tokens: shared tokens are
    the overlap test's business) vs a
    null where every member is replaced by a random universe token of the same stratum (class x frequency).

    sel_a, sel_b [n, N] bool; emb [N, d] unit vectors. Returns obs, null_mean, null_sd, z, p (each [n]);
    p from the normal tail of z. Mean cos over pairs = (sum A) . (sum B) / (K_a K_b): O((K_a + K_b) d) a draw.
    Within-set similarity is not used: a neuron reads one direction of the embedding, so the tokens it
    selects are similar to each other by construction; how its input set relates to its output set is not."""
    rng = np.random.default_rng(seed)
    tag_of = stratum
    order = np.argsort(tag_of, kind="stable")
    start = np.searchsorted(tag_of[order], np.arange(tag_of.max() + 1))
    size = np.bincount(tag_of, minlength=tag_of.max() + 1)

    def draw(members):
        t = tag_of[members]
        return order[start[t][None, :] + (rng.random((n_null, len(members))) * size[t][None, :]).astype(np.int64)]

    n = sel_a.shape[0]
    out = {k: np.full(n, np.nan) for k in ("obs", "null_mean", "null_sd", "z", "p")}
    for u in range(n):
        a, b = np.flatnonzero(sel_a[u]), np.flatnonzero(sel_b[u])
        same = len(np.intersect1d(a, b))
        if not len(a) or not len(b) or len(a) * len(b) - same < 1:
            out["p"][u] = 1.0
            continue
        obs = (emb[a].sum(0) @ emb[b].sum(0) - same) / (len(a) * len(b) - same)
        da, db = draw(a), draw(b)
        coinc = (da[:, :, None] == db[:, None, :]).sum((1, 2))
        null = ((emb[da].sum(1) * emb[db].sum(1)).sum(1) - coinc) / np.maximum(len(a) * len(b) - coinc, 1)
        mu, sd = null.mean(), null.std(ddof=1)
        z = (obs - mu) / max(sd, 1e-3)
        out["obs"][u], out["null_mean"][u], out["null_sd"][u], out["z"][u] = obs, mu, sd, z
        out["p"][u] = float(norm.sf(z))
    return out


def input_selection_scores(act_means: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[n_units, N] how reliably each token raises the unit: (mean_t - mu) * sqrt(count_t), mu the unit's
    count-weighted mean over the universe. Ranks frequent, consistently-active tokens (" the" for an article
    neuron) above rare tokens with a high but thinly-supported mean (word fragments seen 30 times)."""
    w = counts / counts.sum()
    mu = act_means @ w
    return (act_means - mu[:, None]) * np.sqrt(counts)[None, :]


def _sig(q, lor, k, s: Settings):
    return (q < s.alpha) & (lor >= s.min_log_odds) & (k >= 2)


def _rule_side(sig_row, k_row) -> str:
    cls = [c for c in np.argsort(-k_row, kind="stable") if sig_row[c]]
    return "/".join(CLASSES[c] for c in cls)


def classify(U: Universe, out_scores: np.ndarray, W_E: np.ndarray, d_mlp: int,
             act_means: np.ndarray | None = None, in_effect: np.ndarray | None = None,
             counts: np.ndarray | None = None, token_strs: list[str] | None = None,
             settings: Settings | None = None) -> list[UnitType]:
    """Type every unit. out_scores / act_means / in_effect: [n_units, N] over the universe (layer-major
    units); at least one of act_means and in_effect. W_E: [N, d_model] embeddings of the universe tokens.
    Returns one UnitType per unit, in unit order."""
    s = settings or Settings()
    if act_means is None and in_effect is None:
        raise ValueError("classify needs activation means or the input effect")
    if act_means is not None:
        in_scores = act_means if counts is None else input_selection_scores(act_means, counts)
    else:
        in_scores = in_effect
    source = "activations" if act_means is not None else "weights"
    n_units, N = out_scores.shape
    C = len(CLASSES)

    sel_in = select(in_scores, s.tau, s.k_min, s.k_max)
    sel_out = select(out_scores, s.tau, s.k_min, s.k_max)
    keys = np.array([(token_strs[i] if token_strs else str(i)).strip().lower() for i in U.ids])
    key_id = np.unique(keys, return_inverse=True)[1]
    in_keys = np.zeros((n_units, key_id.max() + 1), dtype=bool)
    rows, cols = np.nonzero(sel_in)
    in_keys[rows, key_id[cols]] = True
    shared = in_keys[:, key_id]  # [n, N]: token's spelling is among the input set's
    sel_rule_out = sel_out & ~shared

    e_in = enrichment(sel_in, U.cls, C)
    e_out = enrichment(sel_rule_out, U.cls, C)
    q_in, q_out = bh(e_in.p), bh(e_out.p)
    sig_in = _sig(q_in, e_in.log_odds, e_in.k, s)
    sig_out = _sig(q_out, e_out.log_odds, e_out.k, s)
    e_w = q_w = None
    if act_means is not None and in_effect is not None:
        sel_w = select(in_effect, s.tau, s.k_min, s.k_max)
        e_w = enrichment(sel_w, U.cls, C)
        q_w = bh(e_w.p)

    stratum = strata(U)
    ov, p_ov = overlap_null(sel_in, sel_out, strata(U, by_class=False))
    emb = unit_embeddings(W_E.astype(np.float32))
    coh = cross_coherence(sel_in, sel_out, emb, stratum, s.n_null, s.seed)
    p_content = np.minimum(1.0, 2 * np.minimum(p_ov, coh["p"]))
    q_content = bh(p_content)
    content_effect = (ov >= 2) | (np.nan_to_num(coh["z"]) >= s.min_z)
    is_content = (q_content < s.alpha) & content_effect

    # class coverage: share of the class's corpus occurrences (within the universe) the input set holds
    cls_occ = np.bincount(U.cls, weights=U.counts, minlength=C)
    onehot = np.zeros((N, C))
    onehot[np.arange(N), U.cls] = U.counts
    cover_in = (sel_in @ onehot) / np.maximum(cls_occ, 1)

    def side(sel, scores, e, q, sig, row):
        members = np.flatnonzero(sel[row])
        members = members[np.argsort(-scores[row, members], kind="stable")][: s.n_show]
        toks = [[int(U.ids[m]), token_strs[U.ids[m]] if token_strs else None, round(float(scores[row, m]), 4),
                 CLASSES[U.cls[m]]] for m in members]
        top = [c for c in np.argsort(q[row], kind="stable")[:3] if e.k[row, c] > 0]
        cls = [{"class": CLASSES[c], "k": int(e.k[row, c]), "K": int(e.K[row]), "M": int(e.M[c]), "N": e.N,
                "log_odds": round(float(e.log_odds[row, c]), 3), "p": float(e.p[row, c]), "q": float(q[row, c]),
                "significant": bool(sig[row, c])} for c in top]
        return toks, cls

    def coh_row(d, row):
        return {k: (None if not math.isfinite(d[k][row]) else round(float(d[k][row]), 4)) for k in d}

    results = []
    for u in range(n_units):
        syn = bool(sig_in[u].any() and sig_out[u].any())
        con = bool(is_content[u])
        q_syn = max(float(q_in[u][sig_in[u]].min()) if sig_in[u].any() else float(q_in[u].min()),
                    float(q_out[u][sig_out[u]].min()) if sig_out[u].any() else float(q_out[u].min()))
        q_con = float(q_content[u])
        typ = "mixed" if syn and con else "syntax" if syn else "content" if con else "unclear"
        q_verdict = {"mixed": max(q_syn, q_con), "syntax": q_syn, "content": q_con}.get(typ, min(q_syn, q_con))
        conf = q_verdict if typ == "unclear" else 1.0 - q_verdict
        score = 0.0 if typ == "unclear" else min(300.0, -math.log10(max(q_verdict, 1e-300)))
        rule = f"{_rule_side(sig_in[u], e_in.k[u])} -> {_rule_side(sig_out[u], e_out.k[u])}" if syn else ""
        in_toks, in_cls = side(sel_in, in_scores, e_in, q_in, sig_in, u)
        out_toks, out_cls = side(sel_rule_out, out_scores, e_out, q_out, sig_out, u)
        all_out, _ = side(sel_out, out_scores, e_out, q_out, sig_out, u)
        ev = {
            "input": {"source": source, "tokens": in_toks, "classes": in_cls,
                      "coverage": {CLASSES[c]: round(float(cover_in[u, c]), 3) for c in range(C) if sig_in[u, c]}},
            "output": {"tokens": all_out, "rule_tokens": out_toks, "classes": out_cls},
            "content": {"overlap": [int(U.ids[m]) for m in np.flatnonzero(sel_in[u] & sel_out[u])],
                        "p_overlap": float(p_ov[u]), "coherence": coh_row(coh, u), "q": q_con},
            "syntax": {"q": q_syn},
        }
        if e_w is not None:
            sel_w_row = select(in_effect[u:u + 1], s.tau, s.k_min, s.k_max)
            wt, wc = side(sel_w_row, in_effect[u:u + 1], _row(e_w, u), q_w[u:u + 1], q_w[u:u + 1] < s.alpha, 0)
            ev["input"]["weights"] = {"tokens": wt, "classes": wc}
        results.append(UnitType(u // d_mlp, u % d_mlp, typ, rule, round(conf, 6), round(score, 3), ev))
    return results


def _row(e, u):
    return dataclasses.replace(e, k=e.k[u:u + 1], K=e.K[u:u + 1], log_odds=e.log_odds[u:u + 1], p=e.p[u:u + 1])
