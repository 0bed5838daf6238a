"""Explanations -> a handcraft spec: the bridge behind ``circuitbook handcraft --from-book``.

Each current explanation with a program becomes a spec entry that replaces its unit:

* an activation program with an input clause and a token output -> a ``NeuronSpec``: input = the union of
  its clauses' current-token sets, bias -2 (off: gelu(-2) ~ -0.05), strength so that gelu(-2 + strength)
  is the top clause's scale, output = the program's promote / suppress sets, gain "keep" (the replaced
  neuron's own logit gain on those sets). Context conditions (previous / earlier token) cannot be built
  by the handcraft stage (its neurons read the current token) and are dropped, said in the entry's name;
* a program without an output keeps the neuron's own W_out row (output direction);
* an attention program -> a ``HeadSpec`` (attend as stated; ov "copy", or its output as a one-entry class
  map from the attended tokens; a head with no OV rule keeps attention only and copies).

Units whose explanation has no rule (no input clause) are left as they are. The spec's ``mlp`` stays
"keep": evaluation compares against ablating exactly the replaced units.
"""

from __future__ import annotations

import math

from ..book import explanations as be
from ..handcraft.spec import ClassMap, Direction, HeadSpec, NeuronSpec, OutputRule, Spec, TokenSet
from .program import ActivationProgram, AttentionProgram, ProgramError, program_from_dict


def _inv_gelu(y: float) -> float:
    """x with gelu_new(x) = y for y > 0 (bisection on [0, y + 3])."""
    lo, hi = 0.0, max(y, 0.0) + 3.0
    g = lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # noqa: E731
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) < y else (lo, mid)
    return (lo + hi) / 2


def spec_from_explanations(book, name: str = "from-explanations") -> Spec:
    spec = Spec(name=name, description=f"built from the explanations in {getattr(book, 'path', 'the book')}")
    for (kind, layer, idx), e in sorted(be.current(book).items()):
        if e["program"] is None:
            continue
        try:
            prog = program_from_dict(e["program"], f"explanation {e['id']}")
        except ProgramError:
            continue
        where = f"book: {kind} {layer}.{idx} explanation {e['id']} ({e['author']})"
        if isinstance(prog, ActivationProgram) and kind == "neuron":
            ns = _neuron(prog, layer, idx, where)
            if ns is not None:
                spec.neurons.append(ns)
        elif isinstance(prog, AttentionProgram) and kind == "head":
            spec.heads.append(_head(prog, layer, idx, where))
    spec.text = spec.to_yaml()
    return spec


def _neuron(prog: ActivationProgram, layer: int, idx: int, where: str) -> NeuronSpec | None:
    sets = [c.tokens for c in prog.clauses if c.tokens is not None]
    if not sets:
        return None
    if len(sets) == 1:
        inp = TokenSet(cls=sets[0].cls, words=sets[0].words, ids=sets[0].ids, where=where)
    elif all(s.ids is not None for s in sets):
        inp = TokenSet(ids=sorted({i for s in sets for i in s.ids}), where=where)
    else:
        inp = TokenSet(cls=sets[0].cls, words=sets[0].words, ids=sets[0].ids, where=where)
    dropped = any(c.prev is not None or c.earlier is not None for c in prog.clauses)
    top = max(c.scale for c in prog.clauses)
    strength = 2.0 + _inv_gelu(top) if top > 0 else 4.0
    o = prog.output
    if o is not None and (o.promote is not None or o.suppress is not None):
        out = OutputRule(promote=o.promote, suppress=o.suppress, where=where)
        gain = "keep"
    else:
        out = OutputRule(direction=Direction(neuron=idx, where=where), where=where)
        gain = None
    nm = f"N{layer}.{idx}" + (" (context condition dropped)" if dropped else "")
    return NeuronSpec(input=inp, output=out, name=nm, layer=layer, replaces=idx, strength=strength, gain=gain,
                      bias=-2.0, where=where)


def _head(prog: AttentionProgram, layer: int, idx: int, where: str) -> HeadSpec:
    if isinstance(prog.ov, OutputRule) and isinstance(prog.attend, TokenSet):
        ov = [ClassMap(src=prog.attend, dst=prog.ov, where=where)]
    else:
        ov = "copy"
    return HeadSpec(head=idx, attend=prog.attend, ov=ov, name=f"H{layer}.{idx}", layer=layer, where=where)
