"""Planted models: many generated 1-layer GPT-Neos with known neuron rules, for testing typing on models it was
not built on (the embedded demo is one model; this is a family).

``build_planted(tokenizer, classes, seed, ...)`` draws, from the seed alone:
  * the geometry: random Gaussian token embeddings ``W_E [d_vocab, d_model]`` (N(0, 1) entries), small random
    positions, an unembedding that is either tied (``W_U = W_E.T``, GPT-Neo's default) or independent random;
    attention heads of small random noise;
  * ``n_rules`` planted neurons at random indices, each reading a token set and writing (promoting) a token set
    drawn from the corpus' own token classes (``roles.pos.TokenClasses`` of the stories the model will be
    typed on), one rule kind each (``RULE_KINDS``, cycled so every kind appears);
  * every other neuron a random-direction noise neuron (a random input direction, a random output direction,
    a bias that makes it fire on about a sixth of the tokens).

Reading and writing, exactly. With ``x_t = normalize(W_E[t] + mean W_pos)`` (what the MLP's weightless LayerNorm
sees when attention is small; ``||x_t|| = sqrt(d_model)``), a planted neuron's input weight ``W_in[:, n]`` is the
minimum-norm vector with ``x_t . W_in[:, n] = READ`` for every read token t (``_exact``: random embeddings are
nearly orthogonal, so it is close to ``(READ / sqrt(d)) * sum_t x_t / ||x_t||``, but the read tokens' cross-talk is
solved away) and its bias ``-READ / 2``: pre-activation ``+READ/2`` on every read token and ``-READ/2 +- noise``
elsewhere, so the planted read set is the set the neuron fires on, not only the one it was meant to. Its output
row is ``W_out[n] = WRITE * sum_{v in writes} W_U[:, v] / ||W_U[:, v]||`` (a direction the final norm only
rescales), so its direct logit effect is largest on the written tokens, up to their cross-talk of relative size
``sqrt(k / d_model)`` (an exact, equal-effect write measured no cleaner, and typed possessive outputs worse).

Rule kinds and what a correct typing says (``PlantedRule.expect_type`` / ``expect_in`` / ``expect_out``: the
sets of CLASSES / fine-tag target names the rule's two sides must name):
  class       one class -> another class                      syntax  {A} -> {B}
  union       one class -> a union of two classes (6 + 6)     syntax  {A} -> {B, C}   (articles -> adjectives/nouns)
  possessive  a class -> determiners incl. possessives        syntax  {A} -> {DET}    (in/on/with -> the/his/their)
  fine        a class -> one fine tag (past-tense verbs ...)  syntax  {A} -> {VBD}
  two_rules   two rules in one neuron: A1 u A2 -> B1 u B2     syntax  {A1, A2} -> {B1, B2}
  content     a token set -> the same tokens                  content
Token pools are tokens seen at least ``min_count`` times whose dominant class (and, for fine targets, fine tag)
covers at least ``purity`` of their occurrences, so the planted class is the one the tagger gives them.

Set sizes follow detectability, not taste: a side naming a target that holds a share ``b`` of the typing
universe (tokens seen >= 5 times) gets ``n = ceil(log(DETECT) / log(b))`` tokens (clipped to [4, 16] read,
[6, 24] written, and to the pool), so that a perfect set carries ``b ** n <= DETECT`` (1e-10) of evidence
(the burden of Benjamini-Hochberg over 4,096 units x 64 targets x 2 sources at one discovery is about 1e-7,
and a typed set is rarely exactly the planted one):
five articles suffice (articles are 3% of the universe), a verb rule reads a dozen verbs (a quarter of it),
and an adjective-or-noun output needs two dozen tokens. A side whose target is too broad to reach
``100 x DETECT`` within its cap (``base ** cap``: reads 16, writes 24) is not drawn: nouns-or-verbs cover
58% of a TinyStories universe, and 24 of them carry p 2e-6 at best. No test can find a rule whose planted
evidence is weaker than its multiple-testing burden.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..errors import CircuitbookError
from ..model import Model, parse_hf_config
from ..model.maths import normalize
from ..model.weights import Weights
from ..roles.pos import CLASSES, FINE_TARGETS, TokenClasses

RULE_KINDS = ("class", "union", "possessive", "fine", "two_rules", "content")
DETECT = 1e-10
READ, WRITE = 4.0, 1.0
# classes a rule may read / write (OTHER and PUNCT are grab-bags; PROPN pools are small in TinyStories)
READ_CLASSES = ("PRON", "DET", "ADP", "CONJ", "ADJ", "AUX", "VERB", "NOUN", "ADV", "PROPN")
WRITE_CLASSES = ("NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "PROPN", "AUX")


@dataclasses.dataclass
class PlantedRule:
    """One planted neuron: ``reads`` / ``writes`` vocabulary ids; what typing should say about it."""

    kind: str
    neuron: int
    reads: list[int]
    writes: list[int]
    expect_type: str
    expect_in: list[str]
    expect_out: list[str]


@dataclasses.dataclass
class Planted:
    """A generated model and its truth: ``rules`` (planted neurons) and ``noise`` (every other neuron)."""

    model: Model
    rules: list[PlantedRule]
    noise: list[int]
    seed: int
    settings: dict


def _pools(tc: TokenClasses, min_count: int, purity: float, rng) -> tuple[dict, dict]:
    """{class name: [ids]}, {fine target: [ids]} of unambiguous, frequent-enough tokens, each list shuffled."""
    n = tc.n
    seen = np.flatnonzero(n >= min_count)
    dom = tc.dominant
    share = tc.counts[seen, dom[seen]] / n[seen]
    by_cls: dict[str, list[int]] = {}
    by_tag: dict[str, list[int]] = {}
    for t, s in zip(seen, share):
        if s < purity:
            continue
        by_cls.setdefault(CLASSES[dom[t]], []).append(int(t))
        tags = tc.tag_counts.get(int(t), {})
        if tags:
            tag, cnt = max(tags.items(), key=lambda kv: (kv[1], kv[0]))
            for name, members in FINE_TARGETS.items():
                if tag in members and cnt / n[t] >= purity:
                    by_tag.setdefault(name, []).append(int(t))
    for d in (by_cls, by_tag):
        for k in d:
            d[k] = [int(x) for x in rng.permutation(d[k])]
    return by_cls, by_tag


def _base_rates(tc: TokenClasses, min_count: int = 5) -> dict[str, float]:
    """{class or fine target: share of the typing universe (tokens seen >= min_count times)}."""
    seen = np.flatnonzero(tc.n >= min_count)
    dom = tc.dominant[seen]
    out = {c: float((dom == i).mean()) for i, c in enumerate(CLASSES)}
    tags = [tc.dominant_tag(int(t)) for t in seen]
    for name, members in FINE_TARGETS.items():
        out[name] = float(np.mean([t in members for t in tags]))
    return out


def _draw(pool: dict, name: str, k: int, used: set, lo: int) -> list[int]:
    free = [t for t in pool.get(name, []) if t not in used]
    if len(free) < lo:
        raise CircuitbookError(f"the corpus has only {len(free)} unambiguous {name} tokens (need {lo})")
    out = free[:k]
    used.update(out)
    return out


def _size(base: float, lo: int, hi: int) -> int:
    """Tokens a side needs so that a perfect set of a target with universe share ``base`` is detectable."""
    return int(np.clip(math.ceil(math.log(DETECT) / math.log(max(min(base, 0.95), 1e-9))), lo, hi))


def _rule(kind: str, rng, by_cls: dict, by_tag: dict, base: dict) -> tuple[list, list, list, list, str]:
    """(reads, writes, expect_in, expect_out, type) for one rule of ``kind``; ``base`` {target: universe share}."""
    def pick(options, exclude=(), min_size=6, with_=(), cap=16):
        """A class of ``options`` (not excluded, pool large enough) that keeps the side detectable with the
        classes ``with_`` it joins within ``cap`` tokens."""
        ok = [c for c in options if c not in exclude and len(by_cls.get(c, [])) >= min_size
              and sum(base.get(x, 0.0) for x in (c, *with_)) ** cap <= 100 * DETECT]
        if not ok:
            raise CircuitbookError(f"no detectable class among {options} for a {kind} rule")
        return str(rng.choice(ok))

    def draw_split(pool, names, lo, hi, used):
        n = _size(sum(base.get(c, 0.0) for c in names), lo, hi)
        per = [n // len(names) + (i < n % len(names)) for i in range(len(names))]
        return [t for c, k in zip(names, per) for t in _draw(pool, c, k, used, max(2, k // 2))]

    used: set = set()
    if kind == "content":
        c = pick(("NOUN", "VERB", "ADJ"), min_size=16)
        s = _draw(by_cls, c, int(rng.integers(6, 11)), used, 6)
        return s, s, [], [], "content"
    if kind == "two_rules":
        a1 = pick(READ_CLASSES)
        a2 = pick(READ_CLASSES, (a1,), with_=(a1,))
        b1 = pick(WRITE_CLASSES, (a1, a2), 8, cap=24)
        b2 = pick(WRITE_CLASSES, (a1, a2, b1), 8, with_=(b1,), cap=24)
        reads = draw_split(by_cls, (a1, a2), 6, 16, used)
        writes = draw_split(by_cls, (b1, b2), 8, 24, used)
        return reads, writes, sorted({a1, a2}), sorted({b1, b2}), "syntax"
    a = pick(("ADP", "VERB", "CONJ")) if kind == "possessive" else pick(READ_CLASSES)
    reads = draw_split(by_cls, (a,), 4, 16, used)
    if kind == "class":
        b = pick(WRITE_CLASSES, (a,), 12, cap=24)
        return reads, draw_split(by_cls, (b,), 6, 24, used), [a], [b], "syntax"
    if kind == "union":
        b = pick(WRITE_CLASSES, (a,), 8, cap=24)
        c = pick(WRITE_CLASSES, (a, b), 8, with_=(b,), cap=24)
        return reads, draw_split(by_cls, (b, c), 8, 24, used), [a], sorted({b, c}), "syntax"
    if kind == "possessive":
        poss = [t for t in by_tag.get("PRP$", []) if t not in used][:6]
        arts = [t for t in by_cls.get("DET", []) if t not in used and t not in poss][: 12 - len(poss)]
        if len(poss) < 2 or len(poss) + len(arts) < 6:
            raise CircuitbookError("the corpus has too few determiners and possessives for a possessive rule")
        return reads, poss + arts, [a], ["DET"], "syntax"
    if kind == "fine":
        tag = str(rng.choice([t for t in ("VBD", "VBG", "NNS") if len(by_tag.get(t, [])) >= 12]))
        if (a == "VERB" and tag.startswith("V")) or (a == "NOUN" and tag == "NNS"):
            a = pick(READ_CLASSES, ("VERB", "NOUN"))
            used.clear()
            reads = draw_split(by_cls, (a,), 4, 16, used)
        return reads, draw_split(by_tag, (tag,), 6, 24, used), [a], [tag], "syntax"
    raise CircuitbookError(f"unknown rule kind {kind!r} (known: {', '.join(RULE_KINDS)})")


def _exact(rows: torch.Tensor, target: float) -> torch.Tensor:
    """The minimum-norm w with ``rows @ w == target`` for every row ([k, d], k <= d, rows independent)."""
    r = rows.double()
    return (r.T @ torch.linalg.solve(r @ r.T, torch.full((len(r),), float(target), dtype=torch.float64))).float()


def build_planted(tokenizer, classes: TokenClasses, seed: int, d_model: int = 512, d_mlp: int = 2048,
                  n_heads: int = 8, n_rules: int = 6, kinds: tuple[str, ...] | None = None, tied: bool | None = None,
                  min_count: int = 10, purity: float = 0.9) -> Planted:
    """A 1-layer GPT-Neo over ``tokenizer``'s vocabulary with ``n_rules`` planted neurons (see module docstring).
    ``classes`` are the token classes of the corpus it will be typed on; ``tied`` None draws it from the seed."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    V, d = tokenizer.vocab_size, d_model
    kinds = tuple(kinds or RULE_KINDS)
    tied = bool(rng.integers(2)) if tied is None else tied
    by_cls, by_tag = _pools(classes, min_count, purity, rng)
    base = _base_rates(classes)

    W_E = torch.randn(V, d, generator=g)
    W_pos = torch.randn(512, d, generator=g) * 0.02
    W_U = W_E.T.clone() if tied else torch.randn(d, V, generator=g)
    x = normalize(W_E + W_pos[:256].mean(0), "LN", 1e-5)
    u_hat = W_U / W_U.norm(dim=0, keepdim=True)

    W_in = torch.randn(d, d_mlp, generator=g) / math.sqrt(d)  # pre-activation sd ~1 on every token
    b_in = torch.full((d_mlp,), -1.0)
    W_out = torch.randn(d_mlp, d, generator=g)
    W_out *= WRITE * math.sqrt(12) / W_out.norm(dim=1, keepdim=True)  # the norm of a 12-token write

    neurons = rng.permutation(d_mlp)[:n_rules].tolist()
    rules = []
    for j, n in enumerate(neurons):
        kind = kinds[j % len(kinds)]
        reads, writes, e_in, e_out, typ = _rule(kind, rng, by_cls, by_tag, base)
        W_in[:, n] = _exact(x[reads], READ)
        b_in[n] = -READ / 2
        W_out[n] = u_hat[:, writes].sum(1) * WRITE
        rules.append(PlantedRule(kind, int(n), reads, writes, typ, e_in, e_out))

    dh = d // n_heads
    hf_cfg = {
        "model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"], "vocab_size": V, "hidden_size": d,
        "num_layers": 1, "num_heads": n_heads, "attention_types": [[["global"], 1]], "attention_layers": ["global"],
        "window_size": 256, "max_position_embeddings": 512, "intermediate_size": d_mlp,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": tied,
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "embed_dropout": 0.0,
        "attention_dropout": 0.0, "resid_dropout": 0.0,
    }
    cfg = parse_hf_config(hf_cfg)
    small = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    one, zero = torch.ones(1, d), torch.zeros(1, d)
    w = Weights(
        cfg=cfg, W_E=W_E, W_pos=W_pos,
        W_Q=small(1, n_heads, d, dh), W_K=small(1, n_heads, d, dh), W_V=small(1, n_heads, d, dh),
        b_Q=torch.zeros(1, n_heads, dh), b_K=torch.zeros(1, n_heads, dh), b_V=torch.zeros(1, n_heads, dh),
        W_O=small(1, n_heads, dh, d), b_O=zero.clone(), ln1_w=one.clone(), ln1_b=zero.clone(),
        ln2_w=one.clone(), ln2_b=zero.clone(), W_in=W_in[None], b_in=b_in[None], W_gate=None, W_out=W_out[None],
        b_out=zero.clone(), lnf_w=torch.ones(d), lnf_b=torch.zeros(d), W_U=W_U.contiguous(), b_U=torch.zeros(V),
    )
    planted = set(neurons)
    settings = {"d_model": d, "d_mlp": d_mlp, "n_heads": n_heads, "n_rules": n_rules, "tied": tied,
                "kinds": list(kinds), "min_count": min_count, "purity": purity}
    model = Model(w, tokenizer, source=f"circuitbook-planted(seed={seed}, d_model={d}, d_mlp={d_mlp})")
    return Planted(model, rules, [i for i in range(d_mlp) if i not in planted], seed, settings)


def _shape(rule: str) -> tuple[str, str]:
    """(input family, output family) of a typed rule: "class", "union" or "fine" per side."""
    from ..roles.pos import CLASSES as C

    def fam(side):
        return "union" if "/" in side else "class" if side in C else "fine"

    a, b = rule.split(" -> ")
    return fam(a), fam(b)


def _claims(kind: str, typ: str, rule: str) -> bool:
    """Whether a verdict has the shape a correct verdict on a ``kind`` rule has (a false positive of that kind
    when it is given to a unit that is not one)."""
    if kind == "content":
        return typ in ("content", "mixed")
    if typ not in ("syntax", "mixed"):
        return False
    fi, fo = _shape(rule)
    return {"fine": fo == "fine", "two_rules": fi == fo == "union", "union": fi != "union" and fo == "union",
            "possessive": fi != "union" and rule.endswith("-> DET"),
            "class": fi == fo == "class" and not rule.endswith("-> DET")}[kind]


def _side_ok(named: str, expected: list[str], tokens: list[int], tc: TokenClasses | None) -> bool:
    """A typed side is right when it names exactly the planted targets, or a fine target that holds at least
    1 - NAME_SLACK of the planted tokens (sixteen verbs drawn at random that happen to be mostly past tense
    are truly "VBD")."""
    from ..roles.classify import NAME_SLACK
    from ..roles.targets import side_classes

    if side_classes(named) == set(expected):
        return True
    if tc is None or named not in FINE_TARGETS:
        return False
    share = np.mean([tc.dominant_tag(t) in FINE_TARGETS[named] for t in tokens])
    return bool(share >= 1 - NAME_SLACK)


def typing_hit(rule: PlantedRule, typ: str, typed_rule: str, tc: TokenClasses | None = None) -> bool:
    """A correct verdict: the expected type and, for syntax, both sides naming the planted targets
    (``_side_ok``)."""
    if rule.expect_type == "content":
        return typ == "content"
    if typ != "syntax" or not typed_rule:
        return False
    a, b = typed_rule.split(" -> ")
    return _side_ok(a, rule.expect_in, rule.reads, tc) and _side_ok(b, rule.expect_out, rule.writes, tc)


def evaluate_typing(planted: Planted, types, classes: TokenClasses | None = None) -> dict:
    """Precision and recall of a typing run (``types``: UnitType per neuron, unit order) against the truth.

    Per rule kind: recall = correct verdicts / planted neurons of the kind; precision = correct verdicts /
    every verdict of the kind's shape (``_claims``) given to a planted neuron of the kind or to a noise neuron.
    ``noise_fpr`` = noise neurons not typed unclear / noise neurons. ``misses``: (kind, neuron, type, rule).
    ``classes``: the corpus token classes (lets a side name a fine target the planted tokens share)."""
    by = {t.idx: t for t in types if t.layer == 0}
    out: dict = {"kinds": {}, "misses": []}
    noise_typed = [by[i] for i in planted.noise if by[i].type != "unclear"]
    for kind in dict.fromkeys(r.kind for r in planted.rules):
        rs = [r for r in planted.rules if r.kind == kind]
        hits = sum(typing_hit(r, by[r.neuron].type, by[r.neuron].rule, classes) for r in rs)
        claims = sum(_claims(kind, by[r.neuron].type, by[r.neuron].rule) for r in rs)
        fp = claims - hits + sum(_claims(kind, t.type, t.rule) for t in noise_typed)
        out["kinds"][kind] = {"n": len(rs), "hits": hits, "false_positives": max(fp, 0)}
        out["misses"] += [(kind, r.neuron, by[r.neuron].type, by[r.neuron].rule) for r in rs
                          if not typing_hit(r, by[r.neuron].type, by[r.neuron].rule, classes)]
    out["noise_typed"] = len(noise_typed)
    out["noise"] = len(planted.noise)
    out["noise_fpr"] = len(noise_typed) / max(len(planted.noise), 1)
    return out


def _f1(got: set[int], want: set[int]) -> float:
    hit = len(got & want)
    return 2 * hit / (len(got) + len(want)) if got or want else 1.0


def explanation_match(rule: PlantedRule, program: dict | None, seen, min_seen: int = 3) -> tuple[float, float]:
    """How well an explanation program (``book.explanations`` dict form) names the planted sets: the F1 overlap of
    (its current-token input set, the planted read set) and of (its promoted set, the planted write set).

    Both sides are compared on the corpus the explanation was made from (``seen``: token id -> count there):
    input tokens seen at least ``min_seen`` times (a token the corpus barely holds cannot be told from its
    neighbours), output tokens seen at all (random cross-talk reaches some of the 50k tokens no story holds,
    and no evidence can say they are not promoted). An input clause keyed on anything but the current token
    scores 0 on the input side."""
    if not program or not program.get("input"):
        return 0.0, 0.0
    got: set[int] = set()
    for c in program["input"]:
        ids = (c.get("tokens") or {}).get("ids")
        if ids is None or c.get("prev") or c.get("earlier"):
            return 0.0, 0.0
        got |= set(ids)
    common = {t for t in got | set(rule.reads) if seen.get(t, 0) >= min_seen}
    f_in = _f1(got & common, set(rule.reads) & common)
    out = set(((program.get("output") or {}).get("promote") or {}).get("ids") or [])
    in_corpus = {t for t in out | set(rule.writes) if seen.get(t, 0) >= 1}
    return f_in, _f1(out & in_corpus, set(rule.writes) & in_corpus)


def evaluate_explanations(planted: Planted, current: dict, scores, seen, layer: int = 0, min_sim: float = 0.9,
                          min_f1: float = 0.8, noise_max: float = 0.3) -> dict:
    """Auto explanations and their scores against the truth.

    ``current``: ``book.explanations.current(book)`` ({(kind, layer, idx): explanation}); ``scores``: UnitScores
    of a score run on held-out stories. Per rule kind: planted neurons whose explanation names the planted
    input set (``named_in``: F1 >= ``min_f1``, :func:`explanation_match`), output set (``named_out``), both with
    simulation >= ``min_sim`` (``hits``); ``f1``: (kind, input F1, output F1) per rule. Noise: the largest |simulation| of a noise neuron and how many reach
    ``noise_max``. ``misses``: (kind, neuron, input F1, output F1, simulation, sentence)."""
    sim = {s.idx: s.simulation for s in scores if s.kind == "neuron" and s.layer == layer}
    out: dict = {"kinds": {}, "misses": [], "f1": []}
    for r in planted.rules:
        e = current.get(("neuron", layer, r.neuron)) or {}
        f_in, f_out = explanation_match(r, e.get("program"), seen)
        out["f1"].append((r.kind, f_in, f_out))
        ok_in, ok_out = f_in >= min_f1, f_out >= min_f1
        s = sim.get(r.neuron)
        good = s is not None and s >= min_sim
        k = out["kinds"].setdefault(r.kind, {"n": 0, "named_in": 0, "named_out": 0, "simulated": 0, "hits": 0})
        k["n"] += 1
        k["named_in"] += ok_in
        k["named_out"] += ok_out
        k["simulated"] += good
        k["hits"] += ok_in and ok_out and good
        if not (ok_in and ok_out and good):
            out["misses"].append((r.kind, r.neuron, round(f_in, 3), round(f_out, 3), s, e.get("sentence")))
    ns = [abs(sim[i]) for i in planted.noise if sim.get(i) is not None]
    out["noise"] = len(planted.noise)
    out["noise_scored"] = len(ns)
    out["noise_max"] = max(ns, default=0.0)
    out["noise_over"] = sum(v >= noise_max for v in ns)
    return out
