"""Propose an explanation program from a unit's evidence, offline (no model run, no LLM).

Activation units (:func:`propose_activation`):

* **input** — the scan's token means give, for the tokens with the highest mean activation, their mean and
  count; with the unit's overall count, mean and std that is enough to compute exactly, over every scanned
  token, the correlation of a token-lookup simulation with the true activation:
  ``corr = sqrt(BSS / TSS)`` (between-group over total sum of squares), because a simulation that gives
  each group its mean activation has covariance with the truth equal to its own variance. The set is the
  prefix of tokens (by mean) with the largest BSS, split into up to ``max_tiers`` tiers (one clause each,
  its scale the tier's mean) while a tier adds at least ``min_gain`` correlation. A rule keyed on the
  *previous* token is tried on the example windows and kept when it fits them clearly better.
* **coherence gate** — a rule is only proposed when the evidence says the unit has an interpretable
  mechanism: the typing stage typed it syntax / content / mixed (when the book is typed), and its token
  rule reaches ``min_corr``. Otherwise the explanation says so and has no input clauses (it simulates a
  constant; its score is 0): a token list that merely fits is not an explanation.
* **output** — tokens whose logit effect is at least ``out_share`` of the strongest and ``out_z`` robust
  standard deviations above the vocabulary's median (weights when a model is given, else the circuits stage's top).
* a set is *named* after a class of the book when their Jaccard overlap is >= ``name_jaccard``.

Attention units (:func:`propose_attention`): attend previous / BOS when that mean attention is >= 0.4,
earlier copies of the current token when most pair mass is on (t -> t) pairs, otherwise the key tokens
that carry half of the top pairs' mass; OV "copy" when the circuits stage's copying score is >= 0.5.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..handcraft.spec import OutputRule, TokenSet
from .evidence import ActivationEvidence, AttentionEvidence
from .program import ActivationProgram, AttentionProgram, Clause, describe


@dataclasses.dataclass
class ProposeSettings:
    max_tiers: int = 3
    min_gain: float = 0.03
    min_corr: float = 0.3
    require_typing: bool = True  # only when the book has typing verdicts
    prev_margin: float = 0.1
    out_share: float = 0.5
    out_z: float = 4.0
    out_max: int = 64
    name_jaccard: float = 0.6


@dataclasses.dataclass
class Proposal:
    program: ActivationProgram | AttentionProgram
    sentence: str
    fit: dict  # what the fit found (correlation on the scan, tiers, rule kind, names)


# ---------------------------------------------------------------- token-lookup fit
def _bss(n: np.ndarray, m: np.ndarray, N: float, mu: float, cuts: list[int]) -> float:
    """Between-group sum of squares of groups tokens[cuts[i]:cuts[i+1]] plus the rest (everything else)."""
    tot = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        ng = n[a:b].sum()
        if ng > 0:
            tot += ng * ((n[a:b] * m[a:b]).sum() / ng - mu) ** 2
    k = cuts[-1]
    nr = N - n[:k].sum()
    if nr > 0:
        tot += nr * ((N * mu - (n[:k] * m[:k]).sum()) / nr - mu) ** 2
    return float(tot)


def fit_token_tiers(tokens: list[tuple[int, float, int]], N: int, mu: float, sd: float, max_tiers: int = 3,
                    min_gain: float = 0.03) -> tuple[list[list[int]], list[float], float, float]:
    """(tiers of token ids, tier means, baseline, correlation over all scanned tokens) of the best
    token-lookup rule (see the module doc). Empty tiers when nothing fits (sd 0, no tokens)."""
    if not tokens or sd <= 0 or N <= 0:
        return [], [], mu, 0.0
    toks = sorted(tokens, key=lambda x: -x[1])
    ids = [t for t, _, _ in toks]
    m = np.array([x[1] for x in toks], np.float64)
    n = np.array([x[2] for x in toks], np.float64)
    tss = N * sd * sd
    best_k = max(range(1, len(toks) + 1), key=lambda k: _bss(n, m, N, mu, [0, k]))
    cuts, corr = [0, best_k], np.sqrt(min(_bss(n, m, N, mu, [0, best_k]) / tss, 1.0))
    for _ in range(max_tiers - 1):
        cands = [sorted(cuts + [c]) for c in range(1, best_k) if c not in cuts]
        if not cands:
            break
        c2 = max(cands, key=lambda c: _bss(n, m, N, mu, c))
        r2 = np.sqrt(min(_bss(n, m, N, mu, c2) / tss, 1.0))
        if r2 - corr < min_gain:
            break
        cuts, corr = c2, r2
    tiers = [ids[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    means = [float((n[a:b] * m[a:b]).sum() / n[a:b].sum()) for a, b in zip(cuts[:-1], cuts[1:])]
    k = cuts[-1]
    base = float((N * mu - (n[:k] * m[:k]).sum()) / max(N - n[:k].sum(), 1))
    return tiers, means, base, float(corr)


def _lookup_corr(keys: np.ndarray, vals: np.ndarray, chosen: set[int]) -> float:
    """Correlation of a binary 'key in chosen' simulation with vals on a sample."""
    sim = np.isin(keys, list(chosen)).astype(np.float64)
    if sim.std() == 0 or vals.std() == 0:
        return 0.0
    return float(np.corrcoef(sim, vals)[0, 1])


def _window_pairs(windows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous token, current token, activation) over every window position with a real previous token."""
    P, C, A = [], [], []
    for t, v in windows:
        ok = (t[1:] >= 0) & (t[:-1] >= 0) & np.isfinite(v[1:])
        P.append(t[:-1][ok]), C.append(t[1:][ok]), A.append(v[1:][ok])
    if not P:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(P), np.concatenate(C), np.concatenate(A)


def _best_key_set(keys: np.ndarray, vals: np.ndarray, min_count: int = 3, k_max: int = 32) -> tuple[set[int], float]:
    """The prefix (by mean activation) of keys with the best binary correlation on the sample."""
    if len(keys) == 0:
        return set(), 0.0
    uniq, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    means = np.bincount(inv, vals) / cnt
    order = [i for i in np.argsort(-means) if cnt[i] >= min_count][:k_max]
    best, best_r = set(), 0.0
    for j in range(1, len(order) + 1):
        s = {int(uniq[i]) for i in order[:j]}
        r = _lookup_corr(keys, vals, s)
        if r > best_r:
            best, best_r = s, r
    return best, best_r


# ---------------------------------------------------------------- naming and output
def name_set(ids: list[int], classes: dict[str, list[int]], min_jaccard: float) -> str | None:
    """The class whose tokens best overlap ``ids`` (Jaccard >= min_jaccard), or None."""
    s = set(ids)
    best, best_j = None, 0.0
    for name, members in classes.items():
        m = set(members)
        j = len(s & m) / max(len(s | m), 1)
        if j > best_j:
            best, best_j = name, j
    return best if best_j >= min_jaccard else None


def pick_output(vals: list[tuple[int, float]] | None, sd: float | None, st: ProposeSettings) -> list[int]:
    """Token ids whose effect is >= out_share of the strongest and (with the vocabulary's sd) >= out_z sd."""
    if not vals:
        return []
    top = max(v for _, v in vals)
    if top <= 0:
        return []
    thr = max(st.out_share * top, st.out_z * sd if sd else 0.0)
    return [int(t) for t, v in vals if v >= thr][: st.out_max]


# ---------------------------------------------------------------- proposals
def propose_activation(ev: ActivationEvidence, classes: dict[str, list[int]], token_strs: list[str],
                       st: ProposeSettings | None = None, effects=None) -> Proposal:
    """An ActivationProgram for ``ev`` (see the module doc). ``effects``: (promote, suppress, sd) from
    :func:`evidence.output_effects`, overriding the evidence's stored circuits top tokens."""
    st = st or ProposeSettings()
    tiers, means, base, corr = fit_token_tiers(ev.tokens, ev.count, ev.mean, ev.std, st.max_tiers, st.min_gain)
    fit: dict = {"rule": "current token", "corr_scan": corr, "n_tiers": len(tiers)}
    P, C, A = _window_pairs(ev.windows)
    clauses: list[Clause] = [Clause(scale=s, tokens=TokenSet(ids=sorted(t))) for t, s in zip(tiers, means)]
    if len(A):
        cur = {t for tier in tiers for t in tier}
        r_cur = _lookup_corr(C, A, cur) if cur else 0.0
        prev_set, r_prev = _best_key_set(P, A)
        fit.update(corr_windows_current=r_cur, corr_windows_prev=r_prev)
        if prev_set and r_prev >= r_cur + st.prev_margin:
            on = np.isin(P, list(prev_set))
            clauses = [Clause(scale=float(A[on].mean()), prev=TokenSet(ids=sorted(prev_set)))]
            base = float(A[~on].mean()) if (~on).any() else ev.mean
            fit.update(rule="previous token", corr_scan=None, n_tiers=1)
            corr = r_prev
    typed = ev.typing["type"] if ev.typing else None
    gate = []
    if st.require_typing and ev.typing is not None and typed == "unclear":
        gate.append("typing found no syntax or content mechanism (unclear)")
    if corr < st.min_corr:
        gate.append(f"the best token rule fits weakly (correlation {corr:.2f} < {st.min_corr})")
    names: dict = {}
    promote_vals, suppress_vals, sd = (effects if effects is not None else (ev.promote, ev.suppress, None))
    pro, sup = pick_output(promote_vals, sd, st), pick_output(suppress_vals, sd, st)
    output = None
    if pro or sup:
        output = OutputRule(promote=TokenSet(ids=sorted(pro)) if pro else None,
                            suppress=TokenSet(ids=sorted(sup)) if sup else None)
        for key, ids in (("promote", pro), ("suppress", sup)):
            nm = name_set(ids, classes, st.name_jaccard) if ids else None
            if nm:
                names[key] = nm
    if gate:
        fit["rejected"] = gate
        fit["candidate"] = [c.to_dict() for c in clauses]
        clauses, base = [], ev.mean
    for i, c in enumerate(clauses):
        for key, ts in ((f"input{i}", c.tokens), (f"prev{i}", c.prev)):
            nm = name_set(ts.ids, classes, st.name_jaccard) if ts is not None else None
            if nm:
                names[key] = nm
    prog = ActivationProgram(clauses, base, output)
    sentence = describe(prog, token_strs, names)
    if gate:
        sentence += " (" + "; ".join(gate) + ")"
    fit["names"] = names
    fit["typing"] = {"type": typed, "rule": ev.typing.get("rule") if ev.typing else None}
    return Proposal(prog, sentence, fit)


def propose_attention(ev: AttentionEvidence, classes: dict[str, list[int]], token_strs: list[str],
                      st: ProposeSettings | None = None) -> Proposal:
    st = st or ProposeSettings()
    total = sum(m for _, _, m in ev.pairs) or 1.0
    same = sum(m for q, k, m in ev.pairs if q == k) / total
    if ev.prev >= 0.4 and ev.prev >= ev.bos:
        attend, why = "previous", f"mean attention to the previous token {ev.prev:.2f}"
    elif ev.bos >= 0.4:
        attend, why = "bos", f"mean attention to BOS {ev.bos:.2f}"
    elif same >= 0.5:
        attend, why = "same_token", f"{same:.0%} of top pair mass on (t -> t)"
    else:
        by: dict[int, float] = {}
        for _, k, m in ev.pairs:
            by[k] = by.get(k, 0.0) + m
        keys, acc = [], 0.0
        for k, m in sorted(by.items(), key=lambda x: -x[1]):
            keys.append(k)
            acc += m
            if acc >= 0.5 * total or len(keys) >= 16:
                break
        attend = TokenSet(ids=sorted(keys)) if keys else "bos"
        why = f"key tokens carrying {acc / total:.0%} of the top pairs' mass"
    ov = "copy" if ev.copying is not None and ev.copying >= 0.5 else None
    prog = AttentionProgram(attend, ov)
    names = {}
    if isinstance(attend, TokenSet):
        nm = name_set(attend.ids, classes, st.name_jaccard)
        if nm:
            names["attend"] = nm
    return Proposal(prog, describe(prog, token_strs), {"why": why, "copying": ev.copying, "names": names})
