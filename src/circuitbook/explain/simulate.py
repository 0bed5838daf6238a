"""Simulate an explanation: what the program says the unit does on given tokens.

* :func:`simulate_activation`: an ActivationProgram on token ids [n, T] -> simulated activations [n, T]
  (the decision list of ``program.py``: first matching clause's scale, else the baseline).
* :func:`simulate_pattern`: an AttentionProgram on token ids [n, T] -> the attention pattern it describes
  [n, T, T] (rows sum to 1 over keys <= query; "previous" puts the first position on itself).

Token sets are resolved to vocabulary masks by a :class:`Resolver` (the book's token strings and token
classes, or the model's tokenizer), once per set.
"""

from __future__ import annotations

import numpy as np

from ..handcraft.spec import TokenSet
from .program import ActivationProgram, AttentionProgram, ProgramError


class Resolver:
    """TokenSet -> bool mask [d_vocab]. Words match a token spelled as the word, with a leading space
    (" w" or GPT-2's "Ġw"), single tokens only; classes come from ``classes`` ({name: [ids]})."""

    def __init__(self, token_strs: list[str], classes: dict[str, list[int]] | None = None, d_vocab: int | None = None):
        self.d_vocab = int(d_vocab or len(token_strs))
        self.classes = classes or {}
        self._by_str: dict[str, list[int]] = {}
        for i, s in enumerate(token_strs):
            self._by_str.setdefault(s, []).append(i)
        self._cache: dict[tuple, np.ndarray] = {}

    def ids(self, ts: TokenSet) -> np.ndarray:
        return np.flatnonzero(self.mask(ts))

    def mask(self, ts: TokenSet) -> np.ndarray:
        key = (ts.cls, tuple(ts.words or ()), tuple(ts.ids or ()))
        m = self._cache.get(key)
        if m is not None:
            return m
        m = np.zeros(self.d_vocab, dtype=bool)
        if ts.cls is not None:
            if ts.cls not in self.classes:
                raise ProgramError(f"{ts.where or 'program'}: unknown class {ts.cls!r} "
                                   f"(known: {', '.join(sorted(self.classes)) or 'none: type the book first'})")
            ids = list(self.classes[ts.cls])
        elif ts.ids is not None:
            ids = list(ts.ids)
        else:
            ids = [i for w in ts.words or [] for form in {w, " " + w.strip(), "Ġ" + w.strip()}
                   for i in self._by_str.get(form, [])]
        ids = [i for i in ids if 0 <= i < self.d_vocab]
        m[ids] = True
        self._cache[key] = m
        return m


def _clause_match(c, tokens: np.ndarray, valid: np.ndarray, R: Resolver) -> np.ndarray:
    t = np.clip(tokens, 0, R.d_vocab - 1)
    m = valid.copy() if c.tokens is None else R.mask(c.tokens)[t] & valid
    if c.prev is not None:
        p = np.zeros_like(m)
        p[:, 1:] = R.mask(c.prev)[t[:, :-1]] & valid[:, :-1]
        m &= p
    if c.earlier is not None:
        e = (R.mask(c.earlier)[t] & valid).astype(np.int64)
        cs = np.concatenate([np.zeros((e.shape[0], 1), np.int64), np.cumsum(e, 1)], 1)  # cs[:, j] = sum e[:, :j]
        j = np.arange(e.shape[1])
        lo = np.maximum(j - c.within, 0)
        m &= (cs[:, j] - cs[:, lo]) > 0  # an `earlier` token in positions [j - within, j - 1]
    return m


def simulate_activation(program: ActivationProgram, tokens: np.ndarray, R: Resolver,
                        valid: np.ndarray | None = None) -> np.ndarray:
    """Simulated activations [n, T] (float32) of ``program`` on ``tokens`` [n, T] (padding: ``valid`` False)."""
    tokens = np.asarray(tokens)
    valid = np.ones(tokens.shape, bool) if valid is None else np.asarray(valid, bool)
    out = np.full(tokens.shape, program.baseline, dtype=np.float32)
    done = ~valid
    for c in program.clauses:
        m = _clause_match(c, tokens, valid, R) & ~done
        out[m] = c.scale
        done |= m
    return out


def simulate_pattern(program: AttentionProgram, tokens: np.ndarray, R: Resolver) -> np.ndarray:
    """The attention pattern [n, T, T] the program describes (keys > query get 0). Where no key fits
    (no earlier copy / set token), the query attends to position 0 (the BOS resting place)."""
    tokens = np.asarray(tokens)
    n, T = tokens.shape
    causal = np.tril(np.ones((T, T), bool))
    a = program.attend
    if a == "previous":
        w = np.zeros((n, T, T), np.float32)
        idx = np.maximum(np.arange(T) - 1, 0)
        w[:, np.arange(T), idx] = 1.0
        return w
    if a == "bos":
        w = np.zeros((n, T, T), np.float32)
        w[:, :, 0] = 1.0
        return w
    if a == "same_token":
        keys = (tokens[:, :, None] == tokens[:, None, :]) & causal[None]
    else:
        hit = R.mask(a)[np.clip(tokens, 0, R.d_vocab - 1)]  # [n, T]
        keys = hit[:, None, :] & causal[None]
    keys = keys.astype(np.float32)
    none = keys.sum(-1) == 0
    keys[..., 0] += none
    return keys / keys.sum(-1, keepdims=True)
