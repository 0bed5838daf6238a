"""The model at a glance: how many neurons of each type, the most common rules, the strongest examples."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable

TYPES = ("syntax", "content", "mixed", "unclear")


@dataclasses.dataclass
class Summary:
    """counts {type: n}; rules [(rule, n, [(layer, idx), ...strongest first])] most common first;
    strongest {type: [(layer, idx, rule, score, reads, promotes)]} best first (reads/promotes: token strings)."""

    counts: dict[str, int]
    rules: list[tuple[str, int, list[tuple[int, int]]]]
    strongest: dict[str, list[tuple]]
    beyond_random: int = 0
    """syntax or mixed units whose rule also beats random directions in this model's geometry"""

    def table(self, n_rules: int = 10, n_examples: int = 5, noun: str = "neurons",
              key: Callable[[int, int], str] = lambda l, i: f"L{l}N{i}") -> str:
        """The counts, top rules and strongest units; ``noun`` and ``key`` (layer, idx -> the unit's name)
        name the units (features: "features", ``F<dictionary>.<idx>``)."""
        total = sum(self.counts.values()) or 1
        lines = [f"type      {noun:>7}   share"]
        lines += [f"{t:<9} {self.counts[t]:>7}  {self.counts[t] / total:6.1%}" for t in TYPES]
        lines.append(f"(syntax + mixed beyond random directions: {self.beyond_random})")
        if self.rules:
            lines.append(f"\ntop rules (syntax + mixed {noun})")
            for rule, n, units in self.rules[:n_rules]:
                ex = ", ".join(key(l, i) for l, i in units[:4])
                lines.append(f"  {rule:<28} {n:>5} {noun}   e.g. {ex}")
        for t in ("syntax", "content", "mixed"):
            if self.strongest.get(t):
                lines.append(f"\nstrongest {t}")
                for l, i, rule, score, reads, promotes in self.strongest[t][:n_examples]:
                    lines.append(f"  {key(l, i):<9} {rule or '':<22} score {score:6.1f}  reads {_fmt(reads)}"
                                 f"  promotes {_fmt(promotes)}")
        return "\n".join(lines)


def _fmt(toks) -> str:
    return " ".join(repr(t) for t in toks[:5])


def summarize(types, n_examples: int = 10) -> Summary:
    """types: list of roles.classify.UnitType."""
    counts = Counter(t.type for t in types)
    by_rule: dict[str, list] = {}
    for t in sorted(types, key=lambda t: -t.score):
        if t.rule:
            by_rule.setdefault(t.rule, []).append((t.layer, t.idx))
    rules = sorted(((r, len(u), u) for r, u in by_rule.items()), key=lambda x: (-x[1], x[0]))
    strongest = {}
    for typ in TYPES[:3]:
        best = sorted((t for t in types if t.type == typ), key=lambda t: -t.score)[:n_examples]
        strongest[typ] = [(t.layer, t.idx, t.rule, t.score, [x[1] for x in _reads(t.evidence)],
                           [x[1] for x in t.evidence["output"]["tokens"]]) for t in best]
    beyond = sum(1 for t in types if t.evidence.get("syntax", {}).get("beyond_random"))
    return Summary({t: counts.get(t, 0) for t in TYPES}, rules, strongest, beyond)


def _reads(ev: dict) -> list:
    """The input tokens of the source that decided the unit's input side."""
    inp = ev["input"]
    return inp["weights"]["tokens"] if inp.get("decided_by") == "weights" and "weights" in inp else inp["tokens"]


def book_summary(book):
    """The model table (Summary) of the types stored in ``book`` (book.roles.unit_types)."""
    from ..book import roles as stored
    from .classify import UnitType

    return summarize([UnitType(d["layer"], d["idx"], d["type"], d["rule"], d["confidence"], d["score"],
                               d["evidence"]) for d in stored.unit_types(book, evidence=True)])
