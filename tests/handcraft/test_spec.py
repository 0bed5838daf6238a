import pytest

from circuitbook.errors import CircuitbookError
from circuitbook.handcraft import Direction, SpecError, TokenSet, load_spec, parse_spec

GOOD = """
name: two-rules
classes:
  pronoun: [he, She]
  verb: {ids: [5, 6]}
mlp: replace
direct: {bigram: {smoothing: 0.25}}
neurons:
  - name: pron->verb
    replaces: 3
    input: {class: pronoun}
    output: {promote: {class: verb}, suppress: [the]}
    strength: keep
    gain: 2
  - input: {direction: {neuron: 4}}
    output: {direction: {values: [1.0, 2.0]}}
heads:
  - {head: 1, attend: previous, ov: copy}
  - {head: 2, attend: {class: pronoun}, ov: {map: [{from: {class: pronoun}, to: {class: verb}}]}}
"""


def test_parse_good_spec():
    s = load_spec(GOOD, source="good.yaml")
    assert s.name == "two-rules" and s.mlp == "replace" and s.direct.mode == "bigram" and s.direct.smoothing == 0.25
    n = s.neurons[0]
    assert n.replaces == 3 and n.input == TokenSet(cls="pronoun", where=n.input.where) and n.strength == "keep"
    assert n.output.suppress.words == ["the"] and n.gain == 2.0 and n.fit == "ridge"
    assert isinstance(s.neurons[1].input, Direction) and s.neurons[1].input.neuron == 4 and s.neurons[1].replaces is None
    assert s.heads[0].attend == "previous" and s.heads[1].attend.cls == "pronoun"
    assert s.heads[1].ov[0].dst.promote.cls == "verb"
    assert s.classes["verb"].ids == [5, 6]
    assert "good.yaml:9" in n.where  # the line of the neuron entry


def test_round_trip_through_yaml():
    s = load_spec(GOOD)
    again = load_spec(s.to_yaml())
    assert again.to_dict() == s.to_dict()


@pytest.mark.parametrize("text, needle", [
    ("neurons:\n  - input: {class: a}\n    output: [x]\n    strenght: 3\n", "s.yaml:4: neurons[0].strenght: unknown field"),
    ("neurons:\n  - input: {class: a}\n", "s.yaml:2: neurons[0]: missing required field 'output'"),
    ("neurons:\n  - input: {class: a}\n    output: [x]\n    replaces: -1\n", "neurons[0].replaces"),
    ("neurons:\n  - input: {ids: [1, x]}\n    output: [x]\n", "s.yaml:2: neurons[0].input.ids"),
    ("heads:\n  - {head: 0, attend: next, ov: copy}\n", "s.yaml:2: heads[0].attend: must be previous"),
    ("mlp: swap\n", "s.yaml:1: spec.mlp: must be one of keep, replace"),
    ("direct: {bigram: {smoothing: 0}}\n", "direct.bigram.smoothing"),
    ("neurons:\n  - input: [a]\n    output: [b]\n    bias: keep\n", "needs `replaces`"),
    ("neurons: [\n", "not valid YAML"),
    ("heads:\n  - {head: 0, attend: bos, ov: copy}\n  - {head: 0, attend: bos, ov: copy}\n", "already replaced"),
])
def test_errors_name_line_and_field(text, needle):
    with pytest.raises(SpecError) as e:
        load_spec(text, source="s.yaml")
    assert needle in str(e.value)
    assert isinstance(e.value, CircuitbookError)


def test_missing_file():
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("nope/missing.yaml")


def test_python_dataclasses_match_yaml():
    s = parse_spec({"neurons": [{"input": ["he"], "output": {"promote": ["ran"]}}]})
    assert s.neurons[0].input.words == ["he"] and s.neurons[0].output.promote.words == ["ran"]
