"""Exactness against transformers (fp32, max |Δ log-prob| < 1e-4) on the exact TinyStories configs,
GPT-2, the real TinyStories-656K (Llama) and ts-1l-dev; and proof the tests catch the classic bugs."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

from circuitbook.model import from_hf_model, load_model, log_probs, parse_hf_config

TOL = 1e-4


def hf_log_probs(hf, toks):
    with torch.no_grad():
        return hf(toks).logits.log_softmax(-1)[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]


def neo(n_layers, types, d=1024, heads=16, vocab=50257, seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoConfig(vocab_size=vocab, hidden_size=d, num_layers=n_layers, num_heads=heads,
                       attention_types=[[types, 1]], window_size=256, max_position_embeddings=2048,
                       activation_function="gelu_new", layer_norm_epsilon=1e-5, intermediate_size=None,
                       tie_word_embeddings=True)
    return GPTNeoForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def neo_2l_33m():
    """TinyStories-2Layers-33M's config (global, local) with random weights."""
    return neo(2, ["global", "local"])


@pytest.fixture(scope="module")
def long_tokens():
    torch.manual_seed(1)
    return torch.randint(0, 50257, (2, 600))  # 600 > window 256: the local layer's window matters


def test_tinystories_1l_21m_config(long_tokens):
    hf = neo(1, ["global"])
    m = from_hf_model(hf)
    assert (m.cfg.d_model, m.cfg.n_heads, m.cfg.d_mlp, m.cfg.attn_scale) == (1024, 16, 4096, 1.0)
    err = (hf_log_probs(hf, long_tokens) - log_probs(m.weights, long_tokens)).abs().max()
    assert err < TOL


def test_tinystories_2l_33m_config_local_window(neo_2l_33m, long_tokens):
    m = from_hf_model(neo_2l_33m)
    assert m.cfg.attn_types == ["global", "local"] and m.cfg.window == 256
    err = (hf_log_probs(neo_2l_33m, long_tokens) - log_probs(m.weights, long_tokens)).abs().max()
    assert err < TOL


def test_classic_bugs_are_caught(neo_2l_33m, long_tokens):
    """Turning on 1/sqrt(d_head) scaling, or an off-by-one window, breaks parity far beyond tolerance."""
    ref = hf_log_probs(neo_2l_33m, long_tokens)
    w = from_hf_model(neo_2l_33m).weights
    for bad in (dict(attn_scale=8.0), dict(window=255), dict(window=257), dict(attn_types=["global", "global"])):
        broken = w.replace(cfg=dataclasses.replace(w.cfg, **bad))
        assert (ref - log_probs(broken, long_tokens)).abs().max() > 100 * TOL, bad


def test_gpt2_random():
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=256, n_head=8, vocab_size=1000, bos_token_id=0,
                                    eos_token_id=0)).eval()
    toks = torch.randint(0, 1000, (2, 300))
    err = (hf_log_probs(hf, toks) - log_probs(from_hf_model(hf).weights, toks)).abs().max()
    assert err < TOL


@pytest.mark.parametrize("which", ["ts656k_dir", "ts1l_dir"])
def test_real_checkpoints(which, request):
    path = request.getfixturevalue(which)
    m = load_model(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(2)
    toks = torch.randint(0, m.cfg.d_vocab, (2, 256))
    assert (hf_log_probs(hf, toks) - m.log_probs(toks)).abs().max() < TOL


def test_tolerant_one_layer_config_warns():
    """The real 1L-21M config lists two attention types for one layer; transformers 5 rejects it."""
    raw = {"model_type": "gpt_neo", "num_layers": 1, "hidden_size": 64, "num_heads": 4, "vocab_size": 100,
           "attention_types": [[["global", "local"], 1]], "window_size": 256, "max_position_embeddings": 2048}
    with pytest.warns(UserWarning, match="using the first 1"):
        cfg = parse_hf_config(raw)
    assert cfg.attn_types == ["global"]


@pytest.mark.parametrize("bad, msg", [
    ({"attention_types": [[["global"], 1]], "num_layers": 2}, "describes 1 layers"),
    ({"attention_types": [[["global", "local"], 1]], "attention_layers": ["local", "global"], "num_layers": 2},
     "contradicts"),
    ({"attention_types": [[["globl"], 1]]}, "unknown kinds"),
    ({"model_type": "bert"}, "unsupported model_type"),
    ({"hidden_size": 65}, "not divisible"),
])
def test_config_contradictions_are_refused(bad, msg):
    from circuitbook.model import ConfigError

    raw = {"model_type": "gpt_neo", "num_layers": 1, "hidden_size": 64, "num_heads": 4, "vocab_size": 100,
           "window_size": 256, **bad}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=msg):
            parse_hf_config(raw)


def test_bf16_is_close(long_tokens):
    hf = neo(1, ["global"], d=256, heads=8)
    m = from_hf_model(hf)
    toks = long_tokens[:, :200]
    lp16 = log_probs(m.weights.to(torch.bfloat16), toks)
    assert lp16.dtype == torch.float32
    assert (hf_log_probs(hf, toks) - lp16).abs().mean() < 0.05
