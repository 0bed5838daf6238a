"""Handcraft specs with dictionary features: parsing, directions read off the dictionary exactly, the built
model against a hand forward, and planted truth (superposition demo, its exact transcoder, several seeds):
a token-set unit reading a planted rule's read set and writing its planted direction, in place of that
rule's feature, recovers close to the exact dictionary's loss."""

from __future__ import annotations

import pytest
import torch

from circuitbook.book import Book
from circuitbook.book import handcraft as hb
from circuitbook.corpus import batches
from circuitbook.demo.superposition import build_superposition
from circuitbook.dictionary.handcraft import feature_dictionary
from circuitbook.handcraft import FeatureRef, SpecError, build, evaluate_spec, load_spec, mean_loss, parse_spec
from circuitbook.handcraft.evaluate import store

from ..dictionary.conftest import exact_transcoder
from .conftest import hand_loss, random_dictionary


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FEATURE_SPEC = """
name: features
dictionary_error: drop
neurons:
  - name: f3
    replaces: {feature: {dictionary: tc, idx: 3}}
    input: {class: PRON}
    output: {direction: {feature: {dictionary: tc, idx: 3}}}
  - name: reads f5
    replaces: 2
    input: {direction: {feature: {dictionary: tc, idx: 5}}}
    output: {promote: [dog]}
    bias: keep
"""


def test_parse_and_round_trip():
    s = load_spec(FEATURE_SPEC, "f.yaml")
    a, b = s.neurons
    assert a.replaces == FeatureRef("tc", 3, a.replaces.where) and a.layer is None  # the dictionary's layer
    assert a.output.direction.feature.idx == 3 and b.input.feature == FeatureRef("tc", 5, b.input.feature.where)
    assert b.layer == 0 and b.bias == "keep" and s.dictionary_error == "drop" and s.dictionary_names() == ["tc"]
    again = load_spec(s.to_yaml())
    assert again.to_dict() == s.to_dict() and again.dictionary_error == "drop"
    assert "dictionary_error" not in parse_spec({"neurons": []}).to_dict()  # only written when features are named


@pytest.mark.parametrize("text, needle", [
    ("neurons:\n  - input: [a]\n    output: [b]\n    replaces: {feature: {dictionary: tc, idx: -1}}\n",
     "s.yaml:4: neurons[0].replaces.feature.idx: expected a feature index >= 0"),
    ("neurons:\n  - input: [a]\n    output: [b]\n    replaces: {feature: {dictionary: tc}}\n",
     "missing required field 'idx'"),
    ("neurons:\n  - input: [a]\n    output: [b]\n    replaces: {neuron: 3}\n", "neurons[0].replaces.neuron: unknown field"),
    ("neurons:\n  - input: {direction: {feature: {dictionary: tc, idx: 1, layer: 0}}}\n    output: [b]\n",
     "neurons[0].input.direction.feature.layer: unknown field"),
    ("dictionary_error: sometimes\n", "spec.dictionary_error: must be one of keep, drop"),
    ("neurons:\n  - {input: [a], output: [b], replaces: {feature: {dictionary: tc, idx: 1}}}\n"
     "  - {input: [c], output: [d], replaces: {feature: {dictionary: tc, idx: 1}}}\n",
     "feature 1 of dictionary 'tc' is already replaced"),
])
def test_bad_feature_specs(text, needle):
    with pytest.raises(SpecError, match=None) as e:
        load_spec(text, "s.yaml")
    assert needle in str(e.value), str(e.value)


def test_feature_directions_are_the_dictionary_s_own(demo, demo_fit):
    m = demo.model
    d = random_dictionary("transcoder", m.cfg.d_model, seed=4)
    fd = feature_dictionary(d, 0, "tc", m.cfg)
    spec = parse_spec({"neurons": [{"replaces": 2, "bias": "keep", "input": {"direction": {"feature": {"dictionary": "tc", "idx": 5}}},
                                    "output": {"direction": {"feature": {"dictionary": "tc", "idx": 7}}}}]})
    w = build(spec, m, demo_fit, dictionaries={"tc": fd}).weights
    t = d.tensors()
    assert torch.equal(w.W_in[0, :, 2], t["W_enc"][:, 5]) and float(w.b_in[0, 2]) == float(t["b_enc"][5])
    assert torch.equal(w.W_out[0, 2], t["W_dec"][7])


def test_built_feature_replacement_is_the_hand_forward(demo, demo_fit, demo_eval):
    """The handcrafted model: feature 3 set to 0, the fitted unit's gelu(x @ w_in + b_in) * w_out added,
    the error term dropped (as the spec says) — the hand forward from the raw tensors gives the same CE."""
    m = demo.model
    d = random_dictionary("transcoder", m.cfg.d_model, seed=4)
    spec = load_spec(FEATURE_SPEC.split("  - name: reads f5")[0], "f.yaml")
    built = build(spec, m, demo_fit, demo.truth["classes"], dictionaries={"tc": feature_dictionary(d, 0, "tc", m.cfg)})
    (part,) = built.features.parts
    assert part.idx == [3] and built.removed == [("feature", 0, 3)] and built.replaced == {("feature", 0, 3): "f3"}
    assert torch.equal(part.W_out[0], d.tensors()["W_dec"][3])  # its output: feature 3's decoder row, gain 1
    W_in, b_in, W_out = part.W_in.double(), part.b_in.double(), part.W_out.double()

    def zero3(f):
        f = f.clone()
        f[..., 3] = 0
        return f

    def unit(x):
        pre = x @ W_in + b_in
        return 0.5 * pre * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (pre + 0.044715 * pre ** 3))) @ W_out

    got = mean_loss(built.weights, demo_eval(), built.interventions())[0]
    assert got == pytest.approx(hand_loss(m.weights, demo_eval(), d, zero3, "drop", unit), abs=2e-5)


def test_bad_feature_references_at_build(demo, demo_fit):
    m = demo.model
    tc = feature_dictionary(random_dictionary("transcoder", m.cfg.d_model), 0, "tc", m.cfg)
    sae = feature_dictionary(random_dictionary("sae", m.cfg.d_model), 1, "sae", m.cfg)
    wide = feature_dictionary(random_dictionary("transcoder", 2 * m.cfg.d_model), 2, "wide")
    ref = lambda name, idx: {"feature": {"dictionary": name, "idx": idx}}  # noqa: E731
    cases = [
        ({"replaces": ref("nope", 0), "input": ["he"], "output": ["dog"]}, "no dictionary 'nope' was given"),
        ({"replaces": ref("tc", 24), "input": ["he"], "output": ["dog"]}, "feature 24 does not exist"),
        ({"replaces": ref("tc", 1), "layer": 1, "input": ["he"], "output": ["dog"]}, "stands in for layer 0"),
        ({"replaces": ref("wide", 1), "input": ["he"], "output": ["dog"]}, "the model's d_model is 256"),
        ({"replaces": 3, "input": {"direction": ref("sae", 1)}, "output": ["dog"]}, "is an SAE"),
        ({"replaces": ref("sae", 1), "strength": "keep", "input": ["he"], "output": ["dog"]}, "reads the MLP's output"),
    ]
    for entry, needle in cases:
        spec = parse_spec({"neurons": [entry]}, "s.yaml")
        with pytest.raises(SpecError) as e:
            build(spec, m, demo_fit, dictionaries={"tc": tc, "sae": sae, "wide": wide})
        assert needle in str(e.value) and "s.yaml" in str(e.value), str(e.value)
    mixed = parse_spec({"neurons": [{"replaces": ref("tc", 1), "input": ["he"], "output": ["dog"]},
                                    {"replaces": 4, "input": ["she"], "output": ["cat"]}]}, "s.yaml")
    with pytest.raises(SpecError, match="its neurons cannot be handcrafted in the same spec"):
        build(mixed, m, demo_fit, dictionaries={"tc": tc})
    with pytest.raises(SpecError, match="mlp: replace does not mix"):
        build(parse_spec({"mlp": "replace", "neurons": [{"replaces": ref("tc", 1), "input": ["he"],
                                                         "output": ["dog"]}]}), m, demo_fit, dictionaries={"tc": tc})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_rule_unit_in_place_of_its_feature(seed, tmp_path):
    demo = build_superposition(seed, n_stories=120)
    m, rules = demo.model, list(demo.truth["rules"].items())
    fd = feature_dictionary(exact_transcoder(demo), 0, "exact", m.cfg)
    out = []
    for error in ("keep", "drop"):
        for r in (0, 1, 3):
            name, rule = rules[r]
            spec = parse_spec({"name": f"{name} by hand", "dictionary_error": error, "neurons": [{
                "name": name, "replaces": {"feature": {"dictionary": "exact", "idx": r}}, "input": {"ids": rule["reads"]},
                "output": {"direction": {"values": rule["w"]}}}]})
            res = evaluate_spec(spec, m, demo.stories[:60], demo.stories[60:], demo.truth["classes"], batch_size=16,
                                dictionaries={"exact": fd})
            ev = res.evaluation
            (ref,) = ev.ce_references.values()
            gap = ev.ce_baselines["mean"] - ref  # what the feature is worth against its mean
            out.append(f"{name} (error {error}): recovered mean {ev.recovered['mean']:.3f} zero "
                       f"{ev.recovered['zero']:.3f}, CE {ev.ce_handcrafted:.4f} vs exact dictionary {ref:.4f}")
            assert abs(gap) > 2e-3
            assert abs(ev.ce_handcrafted - ref) < 0.1 * abs(gap) and ev.recovered["mean"] > 0.9
            assert ev.settings["dictionary_error"] == error
            assert f"error term {'kept' if error == 'keep' else 'dropped'}" in ev.summary()
    # a control: the same unit writing another rule's direction does not recover the feature
    wrong = parse_spec({"neurons": [{"replaces": {"feature": {"dictionary": "exact", "idx": 0}},
                                     "input": {"ids": rules[0][1]["reads"]}, "output": {"direction": {"values": rules[1][1]["w"]}}}]})
    bad = evaluate_spec(wrong, m, demo.stories[:60], demo.stories[60:], batch_size=16, dictionaries={"exact": fd})
    out.append(f"control (rule 0 writing rule 1's direction): recovered mean {bad.evaluation.recovered['mean']:.3f}")
    assert bad.evaluation.recovered["mean"] < 0.5
    print(f"\nseed {seed}: " + "; ".join(out))
    book = Book.open(tmp_path / "b.db")
    book.bind_model(m)
    eid = store(book, res, m, "demo")
    full = hb.evaluation(book, eid)
    assert full["units"] == [{"kind": "feature", "layer": 0, "idx": 3, "role": "replaced", "name": rules[3][0]}]
    assert full["result"]["settings"]["dictionary_error"] == "drop"
