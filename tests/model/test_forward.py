"""Taps return what transformers computes, the forward stops early, interventions take effect."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from circuitbook.model import from_hf_model, hook_names, run


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, window_size=8,
                       attention_types=[[["global", "local"], 1]], max_position_embeddings=128)
    hf = GPTNeoForCausalLM(cfg).eval()
    return hf, from_hf_model(hf)


def test_taps_match_transformers(pair):
    hf, m = pair
    toks = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        out = hf(toks, output_hidden_states=True, output_attentions=True)
    ours = m.run(toks, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern",
                        "blocks.1.attn.hook_pattern"])
    assert torch.allclose(ours["blocks.0.hook_resid_pre"], out.hidden_states[0], atol=1e-5)
    assert torch.allclose(ours["blocks.1.hook_resid_pre"], out.hidden_states[1], atol=1e-5)
    for l in (0, 1):
        assert torch.allclose(ours[f"blocks.{l}.attn.hook_pattern"], out.attentions[l], atol=1e-5)
    # local layer: nothing older than the window
    pat = ours["blocks.1.attn.hook_pattern"][0, 0]
    assert pat[30, :23].abs().max() == 0 and pat[30, 23:31].sum() > 0.99


def test_per_head_results_sum_to_attn_out(pair):
    _, m = pair
    toks = torch.randint(0, 300, (1, 20))
    o = m.run(toks, ["blocks.0.attn.hook_result", "blocks.0.hook_attn_out"])
    assert torch.allclose(o["blocks.0.attn.hook_result"].sum(2) + m.weights.b_O[0], o["blocks.0.hook_attn_out"],
                          atol=1e-5)


def test_stops_once_taps_are_collected(pair):
    _, m = pair

    def boom(x):
        raise AssertionError("the forward went past the last requested tap")

    toks = torch.randint(0, 300, (1, 10))
    out = m.run(toks, ["blocks.0.mlp.hook_post"], {"blocks.0.hook_mlp_out": boom, "logits": boom})
    assert set(out) == {"blocks.0.mlp.hook_post"} and out["blocks.0.mlp.hook_post"].shape == (1, 10, 256)


def test_interventions(pair):
    _, m = pair
    toks = torch.randint(0, 300, (1, 12))
    base = m.run(toks)["logits"]
    zeroed = m.run(toks, ["logits", "blocks.1.mlp.hook_post"],
                   {"blocks.1.mlp.hook_post": lambda x: torch.zeros_like(x)})
    assert zeroed["blocks.1.mlp.hook_post"].abs().max() == 0
    assert not torch.allclose(base, zeroed["logits"])
    # ablating the whole MLP output equals removing W_out's contribution by hand
    w = m.weights.clone()
    w.W_out[1] = 0
    w.b_out[1] = 0
    assert torch.allclose(run(w, toks)["logits"], zeroed["logits"], atol=1e-5)


def test_unknown_tap_is_a_clear_error(pair):
    _, m = pair
    with pytest.raises(ValueError, match="unknown activation name"):
        m.run(torch.zeros(1, 3, dtype=torch.long), ["blocks.7.mlp.hook_post"])
    assert "blocks.1.mlp.hook_post" in hook_names(m.cfg) and "blocks.0.mlp.hook_pre_linear" not in hook_names(m.cfg)


def test_too_long_sequence(pair):
    _, m = pair
    with pytest.raises(ValueError, match="exceeds"):
        m.run(torch.zeros(1, 129, dtype=torch.long))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    return from_hf_model(LlamaForCausalLM(cfg).eval())


@pytest.mark.parametrize("arch", ["gpt_neo", "llama"])
def test_packed_rows_equal_the_padded_forward_at_real_positions(pair, arch):
    """``lengths`` runs the position-wise steps on the real rows only: every tap equals the padded forward's
    at real positions (and each sequence run alone), is zero at the padding, and interventions still apply."""
    m = pair[1] if arch == "gpt_neo" else _llama()
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([40, 7, 23, 1])
    toks = torch.randint(0, 300, (4, 40), generator=g)
    names = [n for n in hook_names(m.cfg) if n not in ("hook_embed", "hook_pos_embed")]
    dense, packed = m.run(toks, names), m.run(toks, names, lengths=lengths)
    valid = torch.arange(40)[None] < lengths[:, None]
    for n in names:
        a, b = dense[n], packed[n]
        assert a.shape == b.shape, n
        if "attn_scores" in n or "pattern" in n:  # [b, h, q, k]: real query rows
            sel = valid[:, None, :, None].expand_as(a) & valid[:, None, None, :].expand_as(a)
            assert torch.allclose(a[sel], b[sel], atol=1e-4), n
            continue
        assert torch.allclose(a[valid], b[valid], atol=1e-4, rtol=1e-4), n
        assert b[~valid].abs().max() == 0 if (~valid).any() else True, n
    alone = m.run(toks[1:2, :7], ["logits"])["logits"][0]
    assert torch.allclose(packed["logits"][1, :7], alone, atol=1e-4)
    tap = "blocks.0.mlp.hook_post"
    iv = {tap: lambda x: x * 0}
    a = m.run(toks, ["logits"], iv)["logits"]
    b = m.run(toks, ["logits"], iv, lengths=lengths)["logits"]
    assert torch.allclose(a[valid], b[valid], atol=1e-4)
    with pytest.raises(ValueError, match="lengths"):
        m.run(toks, ["logits"], lengths=torch.tensor([41, 1, 1, 1]))
