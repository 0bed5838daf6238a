"""Structured explanations: a readable sentence plus a program in the handcraft spec's vocabulary.

An explanation of a unit whose activation is one number per token (stats family "activation": neurons,
dictionary features) is an :class:`ActivationProgram`:

    input     a decision list of :class:`Clause` s, tried in order; the first that matches a position
              gives the simulated activation ``scale``; no match gives ``baseline``. A clause matches when
              the current token is in ``tokens`` (a handcraft ``TokenSet``: class, words or ids; None =
              any token) and, if given, the previous token is in ``prev`` and a token of ``earlier``
              occurs among the ``within`` tokens before it.
    output    a handcraft ``OutputRule`` (promote / suppress token sets), or None when unknown.

An explanation of an attention head (stats family "attention") is an :class:`AttentionProgram`: where it
attends (``previous``, ``bos``, ``same_token`` or a TokenSet, as a handcraft ``HeadSpec``) and its OV
rule (``copy``, an OutputRule or None).

Programs round-trip through plain dicts (:func:`program_from_dict` / :meth:`to_dict`), which is how the
book stores them (``book/explanations.py``); a malformed dict raises :class:`ProgramError` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import CircuitbookError
from ..handcraft.spec import OutputRule, TokenSet

ATTENDS = ("previous", "bos", "same_token")


class ProgramError(CircuitbookError, ValueError):
    """An explanation program that cannot be read: the message names the field."""


# ---------------------------------------------------------------- token sets as plain dicts
def set_to_dict(ts: TokenSet | None) -> dict | None:
    if ts is None:
        return None
    if ts.cls is not None:
        return {"class": ts.cls}
    if ts.words is not None:
        return {"words": list(ts.words)}
    return {"ids": [int(i) for i in ts.ids or []]}


def set_from_dict(d: Any, where: str) -> TokenSet | None:
    if d is None:
        return None
    if isinstance(d, list):
        return TokenSet(words=[str(w) for w in d], where=where)
    if not isinstance(d, dict) or len(d) != 1 or next(iter(d)) not in ("class", "words", "ids"):
        raise ProgramError(f"{where}: expected {{class: NAME}}, {{words: [...]}} or {{ids: [...]}}, got {d!r}")
    (k, v), = d.items()
    if k == "class":
        return TokenSet(cls=str(v), where=where)
    if not isinstance(v, list):
        raise ProgramError(f"{where}.{k}: expected a list, got {v!r}")
    if k == "ids":
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            raise ProgramError(f"{where}.ids: expected integer token ids")
        return TokenSet(ids=[int(i) for i in v], where=where)
    return TokenSet(words=[str(w) for w in v], where=where)


def output_to_dict(o: OutputRule | None) -> dict | None:
    if o is None:
        return None
    return {k: set_to_dict(getattr(o, k)) for k in ("promote", "suppress") if getattr(o, k) is not None}


def output_from_dict(d: Any, where: str) -> OutputRule | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not set(d) <= {"promote", "suppress"} or not d:
        raise ProgramError(f"{where}: expected {{promote: SET, suppress: SET}}, got {d!r}")
    return OutputRule(**{k: set_from_dict(v, f"{where}.{k}") for k, v in d.items()}, where=where)


# ---------------------------------------------------------------- programs
@dataclasses.dataclass
class Clause:
    """One input rule: where it matches, the unit's activation is about ``scale``."""

    scale: float
    tokens: TokenSet | None = None  # current token in this set (None: any token)
    prev: TokenSet | None = None  # previous token in this set
    earlier: TokenSet | None = None  # a token of this set among the `within` tokens before
    within: int = 32

    def to_dict(self) -> dict:
        d: dict = {"scale": float(self.scale), "tokens": set_to_dict(self.tokens)}
        if self.prev is not None:
            d["prev"] = set_to_dict(self.prev)
        if self.earlier is not None:
            d["earlier"], d["within"] = set_to_dict(self.earlier), int(self.within)
        return d


@dataclasses.dataclass
class ActivationProgram:
    clauses: list[Clause]
    baseline: float = 0.0
    output: OutputRule | None = None
    family: str = "activation"

    def to_dict(self) -> dict:
        return {"family": "activation", "input": [c.to_dict() for c in self.clauses],
                "baseline": float(self.baseline), "output": output_to_dict(self.output)}


@dataclasses.dataclass
class AttentionProgram:
    attend: str | TokenSet
    ov: str | OutputRule | None = None  # "copy", an OutputRule, or None (unknown)
    family: str = "attention"

    def to_dict(self) -> dict:
        att = self.attend if isinstance(self.attend, str) else {"set": set_to_dict(self.attend)}
        ov = self.ov if isinstance(self.ov, str) or self.ov is None else output_to_dict(self.ov)
        return {"family": "attention", "attend": att, "ov": ov}


Program = ActivationProgram | AttentionProgram


def _number(d: dict, key: str, where: str, default=None) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProgramError(f"{where}.{key}: expected a number, got {v!r}")
    return float(v)


def program_from_dict(d: Any, where: str = "program") -> Program:
    """A stored / hand-written program dict -> ActivationProgram or AttentionProgram (ProgramError if bad)."""
    if not isinstance(d, dict):
        raise ProgramError(f"{where}: expected a mapping, got {type(d).__name__}")
    fam = d.get("family")
    if fam == "activation":
        clauses = []
        if not isinstance(d.get("input", []), list):
            raise ProgramError(f"{where}.input: expected a list of clauses")
        for i, c in enumerate(d.get("input", [])):
            w = f"{where}.input[{i}]"
            if not isinstance(c, dict) or not set(c) <= {"scale", "tokens", "prev", "earlier", "within"}:
                raise ProgramError(f"{w}: expected a clause {{scale, tokens, prev, earlier, within}}, got {c!r}")
            within = int(_number(c, "within", w, 32))
            if within < 1:
                raise ProgramError(f"{w}.within: must be >= 1")
            clauses.append(Clause(_number(c, "scale", w), set_from_dict(c.get("tokens"), f"{w}.tokens"),
                                  set_from_dict(c.get("prev"), f"{w}.prev"),
                                  set_from_dict(c.get("earlier"), f"{w}.earlier"), within))
        return ActivationProgram(clauses, _number(d, "baseline", where, 0.0),
                                 output_from_dict(d.get("output"), f"{where}.output"))
    if fam == "attention":
        a = d.get("attend")
        if isinstance(a, str):
            if a not in ATTENDS:
                raise ProgramError(f"{where}.attend: must be one of {', '.join(ATTENDS)} or {{set: SET}}, got {a!r}")
            attend: str | TokenSet = a
        elif isinstance(a, dict) and set(a) == {"set"}:
            attend = set_from_dict(a["set"], f"{where}.attend.set")
        else:
            raise ProgramError(f"{where}.attend: must be one of {', '.join(ATTENDS)} or {{set: SET}}, got {a!r}")
        ov = d.get("ov")
        if ov is not None and ov != "copy":
            ov = output_from_dict(ov, f"{where}.ov")
        return AttentionProgram(attend, ov)
    raise ProgramError(f"{where}.family: must be 'activation' or 'attention', got {fam!r}")


# ---------------------------------------------------------------- sentences
def _set_words(ts: TokenSet | None, token_strs: list[str] | None, n: int = 6, name: str | None = None) -> str:
    if ts is None:
        return "any token"
    if ts.cls is not None:
        return f"class {ts.cls}"
    if ts.words is not None:
        items = [repr(w) for w in ts.words]
    else:
        strs = token_strs or []
        items = [repr(strs[i].replace("Ġ", " ")) if 0 <= i < len(strs) else f"<{i}>" for i in ts.ids or []]
    body = ", ".join(items[:n]) + (f" … ({len(items)} tokens)" if len(items) > n else "")
    return f"{name} ({body})" if name else body


def describe(program: Program, token_strs: list[str] | None = None, names: dict | None = None) -> str:
    """A readable sentence for ``program``. ``names`` may map "input0", "prev0", "promote", "suppress" to a
    class name that a set mostly is (shown before the tokens)."""
    names = names or {}
    if isinstance(program, AttentionProgram):
        a = program.attend
        where = {"previous": "the previous token", "bos": "the first position (a resting place)",
                 "same_token": "earlier copies of the current token"}.get(a) if isinstance(a, str) else \
            "earlier tokens in " + _set_words(a, token_strs)
        ov = program.ov
        what = " and copies what it attends to" if ov == "copy" else "" if ov is None else \
            " and " + _output_words(ov, token_strs, names)
        return f"attends to {where}{what}"
    if not program.clauses:
        parts = ["no interpretable input rule found"]
    else:
        parts = []
        for i, c in enumerate(program.clauses):
            s = f"fires on {_set_words(c.tokens, token_strs, name=names.get(f'input{i}'))} (about {c.scale:.2g})"
            if c.prev is not None:
                s += f" after {_set_words(c.prev, token_strs, name=names.get(f'prev{i}'))}"
            if c.earlier is not None:
                s += f" when {_set_words(c.earlier, token_strs)} occurred in the last {c.within} tokens"
            parts.append(s)
    sent = "; ".join(parts) + (f"; otherwise about {program.baseline:.2g}" if program.clauses else "")
    if program.output is not None:
        sent += "; " + _output_words(program.output, token_strs, names)
    return sent


def _output_words(o: OutputRule, token_strs, names) -> str:
    bits = []
    if o.promote is not None:
        bits.append("promotes " + _set_words(o.promote, token_strs, name=names.get("promote")))
    if o.suppress is not None:
        bits.append("suppresses " + _set_words(o.suppress, token_strs, name=names.get("suppress")))
    return " and ".join(bits)
