"""Programs: round trip through dicts, typed errors naming the field, sentences."""

from __future__ import annotations

import pytest

from circuitbook.explain.program import (ActivationProgram, AttentionProgram, Clause, ProgramError, describe,
                                         program_from_dict)
from circuitbook.handcraft.spec import OutputRule, TokenSet


def test_round_trip():
    p = ActivationProgram([Clause(2.0, TokenSet(ids=[3, 4]), prev=TokenSet(cls="DET")),
                           Clause(1.0, None, earlier=TokenSet(words=["dog"]), within=5)], -0.1,
                          OutputRule(promote=TokenSet(cls="VERB"), suppress=TokenSet(ids=[9])))
    d = p.to_dict()
    assert program_from_dict(d).to_dict() == d
    h = AttentionProgram(TokenSet(ids=[1, 2]), OutputRule(promote=TokenSet(ids=[5])))
    assert program_from_dict(h.to_dict()).to_dict() == h.to_dict()
    assert program_from_dict(AttentionProgram("previous", "copy").to_dict()).attend == "previous"


@pytest.mark.parametrize("bad, field", [
    ({"family": "x"}, "family"),
    ({"family": "activation", "input": [{"scale": "big"}]}, "input[0].scale"),
    ({"family": "activation", "input": [{"scale": 1, "tokens": {"colour": 1}}]}, "input[0].tokens"),
    ({"family": "activation", "input": [{"scale": 1, "within": 0}]}, "input[0].within"),
    ({"family": "attention", "attend": "sideways"}, "attend"),
    ({"family": "activation", "output": {"boost": []}}, "output"),
])
def test_errors_name_the_field(bad, field):
    with pytest.raises(ProgramError, match=field.replace("[", r"\[").replace("]", r"\]")):
        program_from_dict(bad)


def test_describe():
    strs = ["<bos>", "Ġhe", "Ġshe", "Ġran"]
    p = ActivationProgram([Clause(1.8, TokenSet(ids=[1, 2]))], -0.04, OutputRule(promote=TokenSet(ids=[3])))
    s = describe(p, strs, {"input0": "PRON"})
    assert "fires on PRON (' he', ' she')" in s and "promotes ' ran'" in s and "about 1.8" in s
    assert describe(ActivationProgram([], 0.0), strs).startswith("no interpretable input rule")
    assert "previous token" in describe(AttentionProgram("previous", "copy"))
