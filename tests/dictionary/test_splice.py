"""Splicing against planted truth: an exact transcoder of the superposition MLP recovers all the loss."""

from __future__ import annotations

import pytest
import torch

from circuitbook.dictionary import DictionaryConfig, Dictionary, DictionaryError
from circuitbook.dictionary.splice import evaluate_splice, mean_mlp_out
from circuitbook.dictionary.activations import layer_io

from .conftest import exact_transcoder


def test_exact_transcoder_reproduces_the_mlp(sp_demo):
    m = sp_demo.model
    d = exact_transcoder(sp_demo)
    toks = m.to_tokens(sp_demo.stories[0])
    x, y = layer_io(m, 0, "transcoder", toks)
    assert torch.allclose(d(x), y, atol=1e-4)


def test_spliced_exact_dictionary_recovers_everything(sp_demo):
    m, stories = sp_demo.model, sp_demo.stories[:30]
    r = evaluate_splice(m, exact_transcoder(sp_demo), stories)
    assert r.ce_mean > r.ce_original + 0.05  # the MLP matters in this model
    assert abs(r.ce_spliced - r.ce_original) < 1e-4 and r.kl < 1e-5
    assert r.recovered_mean == pytest.approx(1.0, abs=1e-3) and r.recovered_zero == pytest.approx(1.0, abs=1e-3)
    assert abs(r.ce_spliced_error - r.ce_original) < 1e-5
    rec = r.reconstruction
    assert rec.fvu < 1e-6
    # L0: one feature on each token of a rule class, none elsewhere (counted by hand from the truth)
    ids = set(i for rule in sp_demo.truth["rules"].values() for i in rule["reads"])
    toks = [t for s in stories for t in [m.tokenizer.bos_id] + m.tokenizer.encode(s)]
    assert rec.l0 == pytest.approx(sum(t in ids for t in toks) / len(toks), abs=1e-9)
    assert rec.n_tokens == len(toks) and rec.dead_fraction == 0.0


def test_a_broken_dictionary_recovers_little_and_mean_is_the_mean(sp_demo):
    m, stories = sp_demo.model, sp_demo.stories[:20]
    d = exact_transcoder(sp_demo)
    with torch.no_grad():
        d.W_dec.mul_(0.0)
    mean = mean_mlp_out(m, 0, stories)
    ys = torch.cat([layer_io(m, 0, "sae", m.to_tokens(s))[1] for s in stories])
    assert torch.allclose(mean, ys.mean(0), atol=1e-5)
    r = evaluate_splice(m, d, stories, mean_out=torch.zeros(m.cfg.d_model))
    assert r.recovered_zero == pytest.approx(0.0, abs=1e-4)  # a zero decoder IS zero ablation here (b_dec = 0)
    assert r.recovered_zero_error == pytest.approx(1.0, abs=1e-3)


def test_wrong_width_is_refused(sp_demo):
    d = Dictionary(DictionaryConfig("sae", 0, 64, 10, "relu"))
    with pytest.raises(DictionaryError, match="d_model is 256"):
        evaluate_splice(sp_demo.model, d, sp_demo.stories[:2])
