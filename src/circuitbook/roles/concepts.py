"""Concept search: which neurons and heads respond to a concept's words and promote them.

``concept_search(model, "look search find seek", stories)`` turns the words into vocabulary tokens
(each word, its regular inflections -s/-es/-ed/-d/-ing (with a doubled final consonant or dropped final e),
capitalised and with/without a leading space, unless ``exact``) and scores every unit on both sides, each as a
z-score against the unit's own distribution:

  neurons  input   z_token   = (mean activation at concept-token positions - mu) / sigma
                   z_context = (mean activation at the ``context`` positions right after a concept token - mu) / sigma
                   mu, sigma over every position of the windows read (concept windows + as many others);
                   without stories, z_token comes from per-token activation means (count-weighted, between tokens)
           output  z_out     = (mean direct logit effect on concept tokens - mean over the universe) / sd over it
  heads    input   z_attn    = (mean attention weight on concept-token keys - mean over all non-BOS keys) / sd
           output  z_ov      = for a concept source token, its OV circuit's logit effect on concept tokens vs on the
                               universe (z), averaged over concept sources
score = max(z_token, z_context) + z_out (heads: z_attn + z_ov); ``strong`` when both sides reach ``z_min``.
Each neuron hit carries its best example contexts (the window around its highest concept/context activation).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from ..circuits.basis import make_basis
from ..circuits.ov import ov_factors
from ..corpus import pad, sequences
from ..errors import CircuitbookError
from ..units import unit_key
from .scores import output_effect


class ConceptError(CircuitbookError, ValueError):
    """The concept's words match no vocabulary token."""


def _forms(word: str) -> set[str]:
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing", w + "er"}
    if len(w) >= 3 and w[-1] not in "aeiouwy" and w[-2] in "aeiou" and w[-3] not in "aeiou":
        forms |= {w + w[-1] + "ed", w + w[-1] + "ing"}
    if w.endswith("e"):
        forms.add(w[:-1] + "ing")
    return forms


def concept_tokens(words: str | list[str], token_strs: list[str], exact: bool = False) -> list[int]:
    """Vocabulary ids whose string (leading space and case ignored) is one of the words or (unless ``exact``)
    a regular inflection of one. Sorted ids."""
    if isinstance(words, str):
        words = re.split(r"[\s,]+", words)
    words = [w for w in (w.strip() for w in words) if w]
    if not words:
        raise ConceptError("no concept words given")
    wanted = set()
    for w in words:
        wanted |= {w.lower()} if exact else _forms(w)
    ids = [i for i, s in enumerate(token_strs) if s.strip().lower() in wanted and s.strip()]
    if not ids:
        raise ConceptError(f"none of {words} is a token of this model's vocabulary")
    return ids


@dataclasses.dataclass
class ConceptHit:
    """One unit's response to the concept. reads: concept tokens with the unit's mean activation on them
    (heads: mean attention they receive), best first; promotes: concept tokens with the unit's direct logit
    effect (heads: OV effect from concept sources), best first; top_promoted: the unit's overall top promoted
    universe tokens; examples: [{"tokens": [str], "acts": [float], "focus": i, "value": float}]."""

    kind: str
    layer: int
    idx: int
    score: float
    z_in: float
    z_context: float | None
    z_out: float
    strong: bool
    reads: list[tuple[int, str, float]]
    promotes: list[tuple[int, str, float]]
    top_promoted: list[tuple[int, str, float]]
    examples: list[dict]

    @property
    def key(self) -> str:
        return unit_key(self.kind, self.layer, self.idx)


@dataclasses.dataclass
class ConceptResult:
    """hits: neurons and heads, best score first (``k`` of each kind); token_ids/strs: the concept's tokens."""

    words: list[str]
    token_ids: list[int]
    token_strs: list[str]
    hits: list[ConceptHit]
    n_windows: int

    def strong(self) -> list[ConceptHit]:
        return [h for h in self.hits if h.strong]

    def table(self) -> str:
        lines = [f"concept {' '.join(self.words)}: tokens {' '.join(repr(s) for s in self.token_strs[:16])}"
                 f"{' ...' if len(self.token_strs) > 16 else ''}; {self.n_windows} windows read",
                 "unit       score   z_in  z_ctx  z_out  reads / promotes"]
        for h in self.hits:
            ctx = "   -  " if h.z_context is None else f"{h.z_context:6.1f}"
            lines.append(f"{h.key:<9}{'*' if h.strong else ' '}{h.score:6.1f} {h.z_in:6.1f} {ctx} {h.z_out:6.1f}  "
                         f"reads {' '.join(repr(s) for _, s, _ in h.reads[:4])} / promotes "
                         f"{' '.join(repr(s) for _, s, _ in h.promotes[:4])}")
            for ex in h.examples[:2]:
                toks = ex["tokens"]
                f = ex["focus"]
                text = "".join(toks[:f]) + "[[" + toks[f] + "]]" + "".join(toks[f + 1:])
                lines.append(f"           {ex['value']:6.2f}  {text!r}")
        return "\n".join(lines)


def _z(x, mu, sd):
    return float((x - mu) / max(float(sd), 1e-6))


@torch.inference_mode()
def concept_search(model, words: str | list[str], stories=None, k: int = 10, universe_ids=None, token_means=None,
                   max_windows: int = 128, max_len: int = 128, context: int = 3, exact: bool = False,
                   z_min: float = 3.0, batch_size: int = 16) -> ConceptResult:
    """Rank neurons and heads (see module docstring). ``universe_ids``: tokens the output z is measured over
    (default: tokens seen in the windows, else the whole vocabulary). ``token_means``: (ids [N], counts [N],
    means [n_units, N]) used for the input side when no stories are given."""
    cfg, w = model.cfg, model.weights
    strs = model.tokenizer.token_strs()
    C = concept_tokens(words, strs, exact)
    words = words if isinstance(words, list) else [x for x in re.split(r"[\s,]+", words) if x]
    cset = np.zeros(cfg.d_vocab, dtype=bool)
    cset[C] = True
    n_units = cfg.n_layers * cfg.d_mlp

    # ---- read windows: every window with a concept token (up to max_windows) and as many others for the baseline
    windows, others = [], []
    if stories is not None:
        for _, _, ids in sequences(stories, model.tokenizer, max_len):
            (windows if cset[ids].any() else others).append(ids)
            if len(windows) >= max_windows and len(others) >= max_windows:
                break
        windows = windows[:max_windows]
        others = others[:: max(1, len(others) // max(len(windows), 1))][: len(windows)]
    seqs = windows + others
    seen = np.zeros(cfg.d_vocab, dtype=bool)
    taps = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    taps += [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
    s1 = np.zeros(n_units)
    s2 = np.zeros(n_units)
    n_pos = 0
    c_sum = np.zeros(n_units)
    x_sum = np.zeros(n_units)
    n_c = n_x = 0
    per_tok: dict[int, list] = {}
    focus_acts, focus_where = [], []
    H = cfg.n_layers * cfg.n_heads
    a_s1, a_s2, a_n, a_c, a_cn = np.zeros(H), np.zeros(H), 0, np.zeros(H), 0
    for b0 in range(0, len(seqs), batch_size):
        batch = seqs[b0:b0 + batch_size]
        toks, mask = pad(batch)
        T = toks.shape[1]
        mask[:, 0] = False  # BOS is not a context token
        out = model.run(toks, taps)
        acts = torch.cat([out[t] for t in taps if "mlp" in t], -1).float().cpu().numpy()  # [B, T, n_units]
        tk = toks.numpy()
        m = mask.numpy()
        seen[tk[m]] = True
        a = acts[m]
        s1 += a.sum(0)
        s2 += (a.astype(np.float64) ** 2).sum(0)
        n_pos += len(a)
        is_c = cset[tk] & m
        after = np.zeros_like(is_c)
        for d in range(1, context + 1):
            after[:, d:] |= is_c[:, :-d]
        after &= m & ~is_c
        c_sum += acts[is_c].sum(0)
        n_c += int(is_c.sum())
        x_sum += acts[after].sum(0)
        n_x += int(after.sum())
        for bi, p in zip(*np.nonzero(is_c)):
            per_tok.setdefault(int(tk[bi, p]), []).append(acts[bi, p])
        for bi, p in zip(*np.nonzero(is_c | after)):
            focus_acts.append(acts[bi, p])
            focus_where.append((b0 + bi, p))
        # heads: attention weights on non-BOS keys at or before the query (real positions only)
        pat = torch.stack([out[f"blocks.{l}.attn.hook_pattern"] for l in range(cfg.n_layers)], 1).float()
        pat = pat.reshape(len(batch), H, T, T).numpy()
        valid = np.tril(np.ones((T, T), dtype=bool), 0)[None] & m[:, :, None] & m[:, None, :]
        vals = pat.transpose(0, 2, 3, 1)[valid]  # [n_pairs, H]
        a_s1 += vals.sum(0)
        a_s2 += (vals.astype(np.float64) ** 2).sum(0)
        a_n += len(vals)
        key_c = valid & is_c[:, None, :]
        vc = pat.transpose(0, 2, 3, 1)[key_c]
        a_c += vc.sum(0)
        a_cn += len(vc)

    # ---- universe for output z-scores
    if universe_ids is None:
        universe_ids = np.flatnonzero(seen) if seen.sum() > 2 * len(C) else np.arange(cfg.d_vocab)
    U = np.union1d(np.asarray(universe_ids), C)
    c_in_U = np.isin(U, C)
    basis = make_basis(w)  # unit norm scales: z-scores never depend on them
    eff = output_effect(basis, U)  # [n_units, N]
    z_out = (eff[:, c_in_U].mean(1) - eff.mean(1)) / np.maximum(eff.std(1), 1e-9)

    # ---- neuron input side
    if n_pos:
        mu = s1 / n_pos
        sd = np.sqrt(np.maximum(s2 / n_pos - mu ** 2, 0))
        z_tok = (c_sum / max(n_c, 1) - mu) / np.maximum(sd, 1e-6) if n_c else np.zeros(n_units)
        z_ctx = (x_sum / max(n_x, 1) - mu) / np.maximum(sd, 1e-6) if n_x else None
        reads_val = {t: np.mean(v, 0) for t, v in per_tok.items()}
    elif token_means is not None:
        ids, counts, means = token_means
        wts = counts / counts.sum()
        mu = means @ wts
        sd = np.sqrt(((means - mu[:, None]) ** 2) @ wts)
        inC = np.isin(ids, C)
        if not inC.any():
            raise ConceptError("no concept token has activation data in the book (too rare in the corpus?)")
        cw = counts[inC] / counts[inC].sum()
        z_tok = (means[:, inC] @ cw - mu) / np.maximum(sd, 1e-6)
        z_ctx = None
        reads_val = {int(t): means[:, j] for j, t in enumerate(ids) if inC[j]}
    else:
        raise CircuitbookError("concept search needs stories (or per-token activation means) for the input side")
    z_in = z_tok if z_ctx is None else np.maximum(z_tok, z_ctx)
    score = z_in + z_out

    def examples(u: int, n: int = 3) -> list[dict]:
        if not focus_acts:
            return []
        fa = np.array([f[u] for f in focus_acts])
        out = []
        for j in np.argsort(-fa)[:n]:
            s, p = focus_where[j]
            lo = max(1, p - 12)
            seq = seqs[s]
            out.append({"tokens": [strs[t] for t in seq[lo:p + 4]], "focus": p - lo, "value": float(fa[j]),
                        "acts": None})
        return out

    hits = []
    for u in np.argsort(-score)[:k]:
        u = int(u)
        reads = sorted(((t, strs[t], float(v[u])) for t, v in reads_val.items()), key=lambda x: -x[2])
        prom = sorted(((int(t), strs[t], float(e)) for t, e in zip(U[c_in_U], eff[u, c_in_U])), key=lambda x: -x[2])
        top = [(int(U[j]), strs[U[j]], float(eff[u, j])) for j in np.argsort(-eff[u])[:8]]
        zc = None if z_ctx is None else float(z_ctx[u])
        hits.append(ConceptHit("neuron", u // cfg.d_mlp, u % cfg.d_mlp, float(score[u]), float(z_tok[u]), zc,
                               float(z_out[u]), bool(z_in[u] >= z_min and z_out[u] >= z_min), reads[:8], prom[:8],
                               top, examples(u)))

    # ---- heads
    head_hits = []
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            A, B = ov_factors(basis, l, h, np.asarray(C), U)
            ov = (A @ B).numpy()  # [|C|, N]: the circuits stage's OV circuit, concept sources x universe
            zs = (ov[:, c_in_U].mean(1) - ov.mean(1)) / np.maximum(ov.std(1), 1e-9)
            z_ov = float(zs.mean())
            j = l * cfg.n_heads + h
            if a_n and a_cn:
                mu_a = a_s1[j] / a_n
                sd_a = np.sqrt(max(a_s2[j] / a_n - mu_a ** 2, 0))
                z_att = _z(a_c[j] / a_cn, mu_a, sd_a)
            else:
                z_att = 0.0
            prom = sorted(((int(t), strs[t], float(e)) for t, e in zip(U[c_in_U], ov[:, c_in_U].mean(0))),
                          key=lambda x: -x[2])
            head_hits.append(ConceptHit("head", l, h, z_att + z_ov, z_att, None, z_ov,
                                        bool(z_att >= z_min and z_ov >= z_min), [], prom[:8], [], []))
    head_hits.sort(key=lambda x: -x.score)
    return ConceptResult(words, C, [strs[t] for t in C], hits + head_hits[:k], len(windows))


def find_concept(book, model, words, corpus: str | None = None, k: int = 10, exact: bool = False,
                 max_windows: int = 128) -> "ConceptResult":
    """Concept search (:func:`concept_search`) with the book's corpus and typing universe.

    corpus: stories file (default: the one recorded by ``circuitbook type``); without any corpus the input side
    falls back to the book's per-token activation means."""
    from pathlib import Path

    from ..book import roles as stored
    from ..corpus import read_stories

    path = corpus or book.get_meta("typing_corpus_path")
    stories = list(read_stories(path)) if path and Path(path).is_file() else None
    ids = stored.token_act_ids(book)
    means = stored.token_acts(book) if stories is None else None
    return concept_search(model, words, stories, k=k, universe_ids=ids or None, token_means=means,
                          max_windows=max_windows, exact=exact)
