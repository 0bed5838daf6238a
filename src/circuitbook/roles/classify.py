"""Type every unit: syntax (a class -> class rule), content (reads and writes the same meaning), mixed, or unclear.

For each unit (neuron, layer-major, or any unit with the same score matrices) and a universe of N tokens
(``scores.Universe``):

1. Selections. A side's *set* is every token scoring >= ``tau`` x the unit's best score, clipped to [k_min,
   k_max] tokens (``select``), so a selective unit gets a small, clean set. The input side has up to two
   sources, each selected on its own: activation means from the corpus, ranked by (mean - unit mean) x
   sqrt(count) (frequent, consistently active tokens above thinly supported fragments), and the direct-path
   input effect (weights). The output side is the direct logit effect, minus the tokens spelled like input-set tokens (a unit that reads and writes the same
   words is content, not a VERB -> VERB rule).
2. Side evidence. Each set is tested for enrichment in every rule target (``targets.py``: 12 classes, 45
   unions of two word classes, fine tags such as VBD or PRP$): log-odds and one-sided hypergeometric p
   (``enrichment.target_enrichment``). The activation source favours frequent tokens; with
   ``stratify_activations`` its null keeps the set's frequency make-up (``enrichment.stratified_enrichment``
   over corpus-frequency bins: articles are compared with the frequent tokens' classes, not the universe's),
   at a large cost in power for function-word rules. A target counts only with an effect:
   >= 2 selected tokens and log-odds >= ``min_log_odds`` (and both classes of a union present). The side's p
   is the best such target's p times the number of targets (Bonferroni over targets), and for the input side
   times the number of sources (Bonferroni over activations and weights: the stronger source decides, neither
   overrules the other). The side is named by the smallest-p target among the near-complete descriptions of
   its set (``side_tests``).
3. Syntax = both sides enriched, decided screen-then-confirm over all units: stage 1 screens every unit on its
   stronger side (p1 = 2 min(p_in, p_out), Benjamini-Hochberg over all units at ``alpha``); stage 2 confirms
   the weaker side among the units that passed (p2 = max(p_in, p_out), BH over those units at ``alpha``).
   A clean rule is found by the side that carries the most evidence (five articles among 4,096 neurons) and
   only has to confirm its other side (twelve adjectives and nouns) among the few units that passed, where
   BH over every unit of the model would have needed the same evidence twice. The reported q is max(q1, q2).
   Syntax describes what a unit does, so it is tested against the theoretical nulls above. How much of it is
   more than the embedding geometry gives any direction is recorded beside it: the same two stages on
   p-values calibrated on random-direction units (``calibrate``) give ``evidence.syntax.beyond_random``. In
   random geometry (planted models) the two agree; in a trained model, whose embeddings cluster by class,
   random directions already read and write class-enriched sets, and only the units that beat them pass.
4. Content, beyond syntax, with a real null (every test calibrated on random-direction units, so a unit with
   no mechanism comes out unclear in this model's geometry):
   * overlap — an input set (of either source: the better one, Bonferroni over sources) and the output set
     share tokens (Poisson tail of a frequency-stratified null, ``overlap_null``);
   * coherence — mean cosine between the input-set and output-set token embeddings, as a z against random
     token sets of the same class x frequency strata (``cross_coherence``).
   The overlap p is calibrated on the null units' (``calibrate``); the coherence z is ranked among the null
   units' z (``empirical_p``: its tails are not normal, so nothing beyond the null sample is claimed, and
   coherence alone makes content only where the null sample is large enough for the FDR); p_content = 2 min(p_overlap, p_coherence)
   (Bonferroni), BH over units; content needs q < alpha and the effect of the test that gave the smaller p:
   >= 2 shared tokens for overlap, a calibrated coherence z >= ``min_z`` for coherence.
5. Type: syntax and content -> mixed; only syntax -> syntax; only content -> content; neither -> unclear.
   confidence = 1 - q of the verdict (for unclear: the smaller of the syntax and content q-values, i.e. how
   far the strongest hint is from significance). score = -log10 of that q (capped at 300), used to rank.
The evidence of every side reports its targets' effect sizes (k of K, share, base rate, log-odds) beside
their p-values.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.stats import hypergeom, norm, poisson

from .enrichment import Enrichment, bh, stratified_enrichment, target_enrichment
from .pos import CLASSES
from .scores import NullUnits, Universe
from .targets import Targets, build_targets

TYPES = ("syntax", "content", "mixed", "unclear")
NAME_SLACK = 0.15  # a rule side's name may cover this much less of the set than the most covering target


@dataclasses.dataclass
class Settings:
    """How units are typed (see the module docstring for each step)."""

    tau: float = 0.5
    """a set holds the tokens scoring >= tau x the unit's best score"""
    k_min: int = 3
    """a set holds at least this many tokens"""
    k_max: int = 30
    """a set holds at most this many tokens"""
    alpha: float = 0.05
    """false discovery rate of every Benjamini-Hochberg step"""
    min_log_odds: float = 1.0
    """a target counts only with at least this log-odds ratio (and >= 2 selected tokens)"""
    min_z: float = 5.0
    """coherence effect (calibrated z) needed for content without shared tokens: the null's tail, estimated
    from a few hundred random units, is not trusted beyond about 1e-6, so a coherence-only call needs z >= 5"""
    n_null: int = 128
    """random token sets per unit in the coherence null"""
    n_null_units: int = 512
    """random-direction units (per layer) every test is calibrated on; 0: no calibration"""
    unions: bool = True
    """test unions of two word classes as targets"""
    fine: bool = True
    """test fine-tag targets (VBD, NNS, PRP$, ...)"""
    stratify_activations: bool = False
    """test activation sets against a null that keeps their frequency make-up (see step 2); off by default:
    it costs function-word rules most of their evidence (three articles among the frequent tokens), and the
    planted sweep shows no frequency-driven false positives without it"""
    seed: int = 0
    """seed of the coherence null draws"""
    n_show: int = 12
    """tokens kept as evidence per side"""
    z_select: float | None = 5.0
    """a set also holds every token this many robust sds above the unit's median (None: tau x max only)"""


@dataclasses.dataclass
class UnitType:
    """The verdict on one unit. ``rule`` is "" unless type is syntax or mixed; ``evidence`` is a JSON-able
    dict (input/output sets with their target enrichment, content measures; see ``classify``)."""

    layer: int
    idx: int
    type: str
    rule: str
    confidence: float
    score: float
    evidence: dict


def select(scores: np.ndarray, tau: float, k_min: int, k_max: int, z_min: float | None = None) -> np.ndarray:
    """scores [n, N] -> bool [n, N]: per row the tokens scoring >= tau * row max (and > 0) or, with ``z_min``,
    standing >= z_min robust standard deviations (1.4826 x MAD, at least 5% of the row's max above its median)
    above the row's median, whichever holds more;
    at least k_min and at most k_max of them (ties broken by universe order). The robust rule keeps a rule's
    whole token set when one member outscores the others (sixteen verbs read with weights 1 to 3 over a
    flat floor), where tau x max alone would cut it in half."""
    n, N = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    top = np.take_along_axis(scores, order, 1)
    best = top[:, :1]
    K = ((top >= tau * best) & (top > 0)).sum(1)
    if z_min is not None:
        med = np.median(scores, axis=1, keepdims=True)
        mad = np.median(np.abs(scores - med), axis=1, keepdims=True) * 1.4826
        sd = np.maximum(mad, 0.05 * (best - med))  # a flat floor (MAD ~ 0) is not a licence for float noise
        K = np.maximum(K, ((top - med) >= z_min * np.maximum(sd, 1e-12)).sum(1))
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


@dataclasses.dataclass
class Side:
    """One side's tests for every unit: the selection ``sel`` [n, N], its target enrichment ``e`` ([n, T]
    columns), the effect mask ``ok`` [n, T], the side's p [n] (Bonferroni over targets and ``n_sources``) and
    the best target index ``best`` [n] (-1 where no target has an effect)."""

    sel: np.ndarray
    e: Enrichment
    ok: np.ndarray
    p: np.ndarray
    best: np.ndarray


def side_tests(sel: np.ndarray, T: Targets, s: Settings, n_sources: int = 1,
               stratum: np.ndarray | None = None) -> Side:
    """The side's tests; ``stratum`` [N] switches to the frequency-stratified null. The side's p is its best
    target's (Bonferroni over targets and sources). The side is *named* by the smallest-p target among the
    near-complete descriptions: targets significant on their own (p x T x sources <= alpha) whose share of the
    set is within ``NAME_SLACK`` of the best such share. Six prepositions and six nouns are "ADP/NOUN"
    (share 1.0) although "ADP" alone (share 0.5) has the smaller p; twelve past-tense verbs and one other verb
    are "VBD" (share 0.92, far smaller p than "VERB" at 1.0)."""
    e = target_enrichment(sel, T.masks) if stratum is None else stratified_enrichment(sel, T.masks, stratum)
    ok = (e.k >= 2) & (e.log_odds >= s.min_log_odds) & T.effect_ok(e.k)
    p_ok = np.where(ok, e.p, 1.0)
    rows = np.arange(len(sel))
    factor = len(T) * n_sources
    p = np.minimum(1.0, p_ok.min(1) * factor)
    share = e.k / np.maximum(e.K, 1)[:, None]
    sig = ok & (p_ok * factor <= s.alpha)
    top = np.where(sig, share, -1.0).max(1, keepdims=True)
    near = sig & (share >= top - NAME_SLACK)
    best = np.where(sig.any(1), np.where(near, p_ok, 2.0).argmin(1), p_ok.argmin(1))
    return Side(sel, e, ok, p, np.where(ok[rows, best], best, -1))


def _screen_confirm(p_in: np.ndarray, p_out: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: BH over all units on 2 min(p_in, p_out); stage 2: BH over the passing units on max(p_in, p_out).
    Returns (passed both [n] bool, q [n]: max(q1, q2), q1 where stage 1 failed)."""
    q1 = bh(np.minimum(1.0, 2 * np.minimum(p_in, p_out)))
    passed = q1 < alpha
    q = q1.copy()
    if passed.any():
        q2 = bh(np.maximum(p_in, p_out)[passed])
        q[passed] = np.maximum(q1[passed], q2)
    return passed & (q < alpha), q


def calibrate(p: np.ndarray, p_null: np.ndarray | None) -> np.ndarray:
    """p-values calibrated on the same test's p-values for units with no mechanism (an empirical null, after
    Efron 2004, estimated from explicit null units rather than from the data): z = Phi^-1(1 - p); the null's
    z has centre m = max(median, 0) and spread s = max((90th percentile - m) / 1.2816, 1); the calibrated p is
    the normal tail of (z - m) / s. Never below the uncalibrated p, equal to it where the theoretical null
    holds (random geometry), larger where this model's geometry makes random directions look enriched."""
    if p_null is None or len(p_null) < 10:
        return p
    z = norm.isf(np.clip(p, 1e-300, 1 - 1e-12))
    zn = norm.isf(np.clip(p_null, 1e-300, 1 - 1e-12))
    m = max(float(np.median(zn)), 0.0)
    sd = max((float(np.quantile(zn, 0.9)) - m) / 1.2816, 1.0)
    return np.maximum(p, norm.sf((z - m) / sd))


def empirical_p(z: np.ndarray, z_null: np.ndarray) -> np.ndarray:
    """p = (1 + #null units with z >= z_obs) / (1 + #null units): the coherence z of a unit ranked among the
    random-direction units'. Its tails are not normal (tied embeddings, frequency clusters), so no normal
    extrapolation is trusted; with R null units no coherence p goes below 1 / (R + 1)."""
    zn = np.sort(np.nan_to_num(z_null, nan=-np.inf))
    above = len(zn) - np.searchsorted(zn, np.nan_to_num(z, nan=-np.inf), side="left")
    return (1.0 + above) / (1.0 + len(zn))


def classify(U: Universe, out_scores: np.ndarray, W_E: np.ndarray, d_mlp: int,
             act_means: np.ndarray | None = None, in_effect: np.ndarray | None = None,
             counts: np.ndarray | None = None, token_strs: list[str] | None = None,
             settings: Settings | None = None, null: NullUnits | None = None) -> list[UnitType]:
    """Type every unit. out_scores / act_means / in_effect: [n_units, N] over the universe (layer-major
    units); at least one of act_means and in_effect. W_E: [N, d_model] embeddings of the universe tokens.
    ``null``: random-direction units (``scores.random_units``) every test is calibrated on (``calibrate``);
    None tests against the theoretical nulls alone. Returns one UnitType per unit, in unit order."""
    s = settings or Settings()
    if act_means is None and in_effect is None:
        raise ValueError("classify needs activation means or the input effect")
    rank_acts = (lambda a: a) if counts is None else (lambda a: input_selection_scores(a, counts))
    sources = []  # (name, scores, stratum, null scores)
    if act_means is not None:
        sources.append(("activations", rank_acts(act_means), strata(U, by_class=False) if s.stratify_activations else None,
                        None if null is None or null.act_means is None else rank_acts(null.act_means)))
    if in_effect is not None:
        sources.append(("weights", in_effect, None, None if null is None else null.in_effect))
    n_units, N = out_scores.shape
    T = build_targets(U.cls, U.tags, s.unions, s.fine)

    def tested(scores, stratum, n_src=1):
        return side_tests(select(scores, s.tau, s.k_min, s.k_max, s.z_select), T, s, n_src, stratum)

    ins, p_in_cal = [], []
    for _, sc, st, sc0 in sources:
        side = tested(sc, st, len(sources))
        p_in_cal.append(side.p if sc0 is None else calibrate(side.p, tested(sc0, st, len(sources)).p))
        ins.append(side)
    p_in = np.min([x.p for x in ins], axis=0)
    p_in_cal = np.min(p_in_cal, axis=0)
    src = np.argmin([x.p for x in ins], axis=0)  # [n] which source decides the input side
    sel_in = ins[0].sel  # the first source's set is the one shown (activations when present)

    sel_out = select(out_scores, s.tau, s.k_min, s.k_max, s.z_select)
    keys = np.array([(token_strs[i] if token_strs else str(i)).strip().lower() for i in U.ids])
    key_id = np.unique(keys, return_inverse=True)[1]
    in_keys = np.zeros((n_units, key_id.max() + 1), dtype=bool)
    for x in ins:
        rows, cols = np.nonzero(x.sel)
        in_keys[rows, key_id[cols]] = True
    out = side_tests(sel_out & ~in_keys[:, key_id], T, s)
    p_out_cal = out.p if null is None else calibrate(out.p, tested(null.out_scores, None).p)
    is_syntax, q_syn = _screen_confirm(p_in, out.p, s.alpha)
    beyond, q_beyond = _screen_confirm(p_in_cal, p_out_cal, s.alpha)

    stratum, freq = strata(U), strata(U, by_class=False)
    overlaps = [overlap_null(x.sel, sel_out, freq) for x in ins]  # per input source, Bonferroni over sources
    ov_src = np.argmin([o[1] for o in overlaps], axis=0)
    ov = np.choose(ov_src, [o[0] for o in overlaps])
    p_ov = np.minimum(1.0, np.choose(ov_src, [o[1] for o in overlaps]) * len(overlaps))
    sel_ov = np.choose(ov_src[:, None], [x.sel for x in ins]) & sel_out
    emb = unit_embeddings(W_E.astype(np.float32))
    coh = cross_coherence(sel_in, sel_out, emb, stratum, s.n_null, s.seed)
    p_coh = coh["p"]
    if null is not None:
        a = select(null.in_effect if null.act_means is None or act_means is None else rank_acts(null.act_means),
                   s.tau, s.k_min, s.k_max, s.z_select)
        b = select(null.out_scores, s.tau, s.k_min, s.k_max, s.z_select)
        p_ov = calibrate(p_ov, overlap_null(a[:len(b)], b[:len(a)], freq)[1])
        z_null = cross_coherence(a[:len(b)], b[:len(a)], emb, stratum, s.n_null, s.seed + 1)["z"]
        p_coh = empirical_p(coh["z"], z_null)
    z_cal = norm.isf(np.clip(p_coh, 1e-300, 1.0))
    coh["z_calibrated"] = z_cal
    p_content = np.minimum(1.0, 2 * np.minimum(p_ov, p_coh))
    q_content = bh(p_content)
    by_overlap = p_ov <= p_coh  # the test that carries the evidence must carry the effect too
    is_content = (q_content < s.alpha) & np.where(by_overlap, ov >= 2, z_cal >= s.min_z)

    def tokens(sel_row, score_row):
        members = np.flatnonzero(sel_row)
        members = members[np.argsort(-score_row[members], kind="stable")][: s.n_show]
        return [[int(U.ids[m]), token_strs[U.ids[m]] if token_strs else None, round(float(score_row[m]), 4),
                 CLASSES[U.cls[m]]] for m in members]

    def targets_row(side: Side, u: int, chosen: bool):
        order = [t for t in np.argsort(np.where(side.ok[u], side.e.p[u], 2.0), kind="stable")[:3]
                 if side.e.k[u, t] > 0]
        return [{"class": T.names[t], "family": T.family[t], "k": int(side.e.k[u, t]), "K": int(side.e.K[u]),
                 "M": int(side.e.M[t]), "N": side.e.N, "share": round(float(side.e.k[u, t] / max(side.e.K[u], 1)), 3),
                 "base": round(float(side.e.M[t] / side.e.N), 4), "log_odds": round(float(side.e.log_odds[u, t]), 3),
                 "p": float(side.e.p[u, t]), "q": float(q_syn[u]),
                 "significant": bool(chosen and t == side.best[u])} for t in order]

    def coh_row(u):
        return {k: (None if not math.isfinite(v[u]) else round(float(v[u]), 4)) for k, v in coh.items()}

    results = []
    for u in range(n_units):
        syn, con = bool(is_syntax[u]), bool(is_content[u])
        q_s, q_c = float(q_syn[u]), float(q_content[u])
        typ = "mixed" if syn and con else "syntax" if syn else "content" if con else "unclear"
        q_verdict = {"mixed": max(q_s, q_c), "syntax": q_s, "content": q_c}.get(typ, min(q_s, q_c))
        conf = q_verdict if typ == "unclear" else 1.0 - q_verdict
        score = 0.0 if typ == "unclear" else min(300.0, -math.log10(max(q_verdict, 1e-300)))
        win = ins[src[u]]
        rule = f"{T.names[win.best[u]]} -> {T.names[out.best[u]]}" if syn else ""
        ev = {
            "input": {"source": sources[0][0], "decided_by": sources[src[u]][0],
                      "tokens": tokens(sel_in[u], sources[0][1][u]), "classes": targets_row(win, u, syn),
                      "p": float(p_in[u])},
            "output": {"tokens": tokens(sel_out[u], out_scores[u]), "rule_tokens": tokens(out.sel[u], out_scores[u]),
                       "classes": targets_row(out, u, syn), "p": float(out.p[u])},
            "content": {"overlap": [int(U.ids[m]) for m in np.flatnonzero(sel_ov[u])],
                        "p_overlap": float(p_ov[u]), "coherence": coh_row(u), "q": q_c},
            "syntax": {"q": q_s, "q_beyond_random": float(q_beyond[u]), "beyond_random": bool(syn and beyond[u])},
        }
        if len(sources) > 1:
            ev["input"]["weights"] = {"tokens": tokens(ins[1].sel[u], sources[1][1][u]),
                                      "classes": targets_row(ins[1], u, syn and src[u] == 1), "p": float(ins[1].p[u])}
        results.append(UnitType(u // d_mlp, u % d_mlp, typ, rule, round(conf, 6), round(score, 3), ev))
    return results
