"""Feature circuits equal the neuron analyses when the dictionary IS the MLP; feature activations are encode."""

from __future__ import annotations

import torch

from circuitbook.circuits.basis import make_basis
from circuitbook.circuits.neuron_in import neuron_input_effects
from circuitbook.circuits.neuron_out import neuron_output_effects
from circuitbook.demo import build_demo
from circuitbook.dictionary import Dictionary, DictionaryConfig
from circuitbook.dictionary.activations import layer_io
from circuitbook.dictionary.features import feature_acts, feature_input_effects, feature_output_effects

from .conftest import exact_transcoder


def test_a_dictionary_made_of_the_neurons_has_the_neurons_effects():
    m = build_demo().model
    w = m.weights
    d = Dictionary.from_tensors(DictionaryConfig("transcoder", 0, m.cfg.d_model, m.cfg.d_mlp, "relu"),
                                {"W_enc": w.W_in[0], "b_enc": w.b_in[0], "W_dec": w.W_out[0], "b_dec": w.b_out[0]})
    b = make_basis(m)
    fo, no = feature_output_effects(m, d, k=5), neuron_output_effects(b, 0, None, 5)
    assert torch.equal(fo.top.ids, no.top.ids) and torch.allclose(fo.norms, no.norms, atol=1e-5)
    fi, ni = feature_input_effects(m, d, k=5), neuron_input_effects(b, 0, None, 5)
    assert torch.equal(fi.top.ids, ni.top.ids) and torch.allclose(fi.top.vals, ni.top.vals, atol=1e-4)


def test_planted_features_promote_their_targets_and_read_their_class(sp_demo):
    m, truth = sp_demo.model, sp_demo.truth
    d = exact_transcoder(sp_demo)
    out, inp = feature_output_effects(m, d, k=2), feature_input_effects(m, d, k=2)  # every class has >= 2 tokens
    for r, rule in enumerate(truth["rules"].values()):
        assert set(out.top.ids[r].tolist()) <= set(rule["writes"])
        assert set(inp.top.ids[r].tolist()) <= set(rule["reads"])
    toks = m.to_tokens(sp_demo.stories[1])
    f = feature_acts(m, d, toks)
    x, _ = layer_io(m, 0, "transcoder", toks)
    assert f.shape == (1, toks.shape[1], 8) and torch.allclose(f[0], d.encode(x))
