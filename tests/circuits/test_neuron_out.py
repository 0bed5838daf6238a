"""Neuron output effects against the real forward with the norms' scales frozen (which makes them linear)."""

import pytest
import torch

from circuitbook.circuits import (CircuitError, NormScales, make_basis, neuron_output_effect, neuron_output_effects,
                                  neuron_output_vector)
from circuitbook.circuits.neuron_out import output_paths
from circuitbook.model.forward import run

S_FINAL, S_LN1 = 1.7, 2.3


def const(s):
    return lambda x: torch.full_like(x, s)


def centred_logit_diff(w, toks, iv_base, iv_plus):
    a = run(w, toks, ["logits"], iv_base)["logits"][0, -1]
    b = run(w, toks, ["logits"], iv_plus)["logits"][0, -1]
    d = b - a
    return d - d.mean()


def scales(cfg):
    return NormScales([S_LN1] * cfg.n_layers, [1.0] * cfg.n_layers, S_FINAL)


def test_direct_effect_is_the_logit_change_of_adding_the_neuron(gpt2_2l, llama_2l):
    for model in (gpt2_2l, llama_2l):
        w = model.weights
        L = w.cfg.n_layers - 1
        toks = torch.tensor([[3, 5, 7]])
        b = make_basis(model, scales(w.cfg))
        for n in (0, 17):
            base = {"ln_final.hook_scale": const(S_FINAL)}
            plus = dict(base, **{f"blocks.{L}.hook_resid_post": lambda x, n=n: x + w.W_out[L, n]})
            want = centred_logit_diff(w, toks, base, plus)
            torch.testing.assert_close(neuron_output_vector(b, L, n), want, atol=1e-4, rtol=1e-4)


def test_path_through_a_later_head(gpt2_2l, llama_2l):
    """Add W_out[0][n] at position 0, make head (1, h) attend only there, freeze ln1/ln_final scales: the
    change in that head's output, read by the unembedding, is the path effect."""
    for model in (gpt2_2l, llama_2l):
        w = model.weights
        b = make_basis(model, scales(w.cfg))
        toks = torch.tensor([[4, 9, 2]])
        n, h = 5, 3

        def onehot(p):
            p = p.clone()
            p[:, h] = 0
            p[:, h, :, 0] = 1
            return p

        def head_out(extra):
            iv = {"blocks.1.ln1.hook_scale": const(S_LN1), "blocks.1.attn.hook_pattern": onehot}
            if extra:
                iv["blocks.0.hook_resid_post"] = lambda x: x + torch.nn.functional.pad(
                    w.W_out[0, n][None, None], (0, 0, 0, x.shape[1] - 1))
            return run(w, toks, ["blocks.1.attn.hook_result"], iv)["blocks.1.attn.hook_result"][0, -1, h]

        d = head_out(True) - head_out(False)
        if w.cfg.norm == "LN":
            d = d - d.mean()
        logits = (d / S_FINAL * w.lnf_w) @ w.W_U
        want = logits - logits.mean()
        torch.testing.assert_close(neuron_output_vector(b, 0, n, via=(1, h)), want, atol=1e-4, rtol=1e-4)


def test_layer_effects_match_single_neuron_effects(gpt2_2l):
    e = neuron_output_effects(gpt2_2l, 0, via=(1, 2), k=4)
    for n in (0, 33, 127):
        one = neuron_output_effect(gpt2_2l, 0, n, via=(1, 2), k=4)
        assert torch.equal(e.top.ids[n], one.top_ids) and torch.equal(e.bottom.ids[n], one.bottom_ids)
        assert e.neuron(n).norm == pytest.approx(one.norm, rel=1e-5)
    assert e.top.ids.shape == (128, 4)


def test_paths_and_bad_requests(gpt2_2l):
    assert output_paths(gpt2_2l.cfg, 1) == [None]
    assert output_paths(gpt2_2l.cfg, 0) == [None] + [(1, h) for h in range(4)]
    with pytest.raises(CircuitError):
        neuron_output_vector(gpt2_2l, 1, 0, via=(0, 1))  # heads before the neuron are not output paths
    with pytest.raises(CircuitError, match="no neuron"):
        neuron_output_vector(gpt2_2l, 0, 128)


def test_demo_planted_neurons_promote_their_classes(demo):
    for name in ("pronoun_verb", "article_noun", "search"):
        writes = set(demo.truth["rules"][name]["writes"])
        e = neuron_output_effect(demo.model, 0, demo.truth[name], k=len(writes))
        assert set(e.top_ids.tolist()) == writes, name
