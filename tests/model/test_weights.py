"""Processing leaves log-probs unchanged; HF export round-trips; TransformerLens state dict matches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoConfig, GPTNeoForCausalLM

from circuitbook.model import from_hf_model, load_model, log_probs, save_hf, to_hooked_transformer


def random_neo(n_layers=2, d=128, heads=4, vocab=500, seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoConfig(vocab_size=vocab, hidden_size=d, num_layers=n_layers, num_heads=heads,
                       attention_types=[[["global", "local"], n_layers // 2]] if n_layers > 1 else [[["global"], 1]],
                       window_size=16, max_position_embeddings=256, intermediate_size=None)
    hf = GPTNeoForCausalLM(cfg).eval()
    # non-trivial norms so folding has something to fold
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "ln" in n:
                p.add_(torch.randn_like(p) * 0.3)
    return hf


@pytest.fixture(scope="module")
def models(ts656k_dir):
    return {"neo": from_hf_model(random_neo()), "llama": load_model(ts656k_dir)}


@pytest.mark.parametrize("name", ["neo", "llama"])
def test_processing_keeps_log_probs(models, name):
    m = models[name]
    toks = torch.randint(0, m.cfg.d_vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    ref = log_probs(m.weights, toks)
    p = m.weights.processed()
    assert "fold_ln" in p.processing
    assert torch.allclose(p.ln2_w, torch.ones_like(p.ln2_w))
    assert (ref - log_probs(p, toks)).abs().max() < 1e-4
    if m.cfg.norm == "LN":
        assert "center_writing_weights" in p.processing
        assert p.W_out.mean(-1).abs().max() < 1e-6
    assert p.W_U.mean(-1).abs().max() < 1e-6


def test_center_writing_refused_for_rms(models):
    with pytest.raises(ValueError, match="RMSNorm"):
        models["llama"].weights.center_writing_weights()


@pytest.mark.parametrize("name", ["neo", "llama"])
def test_hf_export_round_trip(models, name, tmp_path):
    m = models[name]
    save_hf(m, tmp_path / "out")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    toks = torch.randint(0, m.cfg.d_vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(toks).logits.log_softmax(-1)[:, :-1].gather(-1, toks[:, 1:, None])[..., 0]
    assert (ref - log_probs(m.weights, toks)).abs().max() < 1e-4
    again = load_model(tmp_path / "out")
    for k, t in m.weights.tensors().items():
        assert torch.equal(t, again.weights.tensors()[k]), k


def test_export_refuses_unrepresentable(models, tmp_path):
    with pytest.raises(ValueError, match="no place for"):
        save_hf(models["neo"].weights.processed(), tmp_path / "x")


def test_transformer_lens_state_dict():
    """Our TL-format state dict gives TL's HookedTransformer the same logits (global layers: TL 3.x's
    HookedTransformerConfig built by hand did not apply attn_types' local window in our check)."""
    tl = pytest.importorskip("transformer_lens")
    try:
        tl.HookedTransformerConfig
    except (ImportError, AttributeError):
        pytest.skip("TransformerLens >= 4 removed HookedTransformer; the test extra pins 3.x")
    m = from_hf_model(random_neo(n_layers=1))
    c = m.cfg
    ht = to_hooked_transformer(m.weights)
    toks = torch.randint(0, c.d_vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ht(toks).log_softmax(-1)
    assert (ref - m.run(toks)["logits"].log_softmax(-1)).abs().max() < 1e-4
