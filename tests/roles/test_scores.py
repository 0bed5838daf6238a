"""Typing's input and output scores are the circuits stage's input and output effects (one definition), and
both are what the real forward computes on a lone token at an average position (attention removed)."""

import numpy as np
import pytest
import torch

from circuitbook.circuits import NormScales, make_basis, neuron_input_vector, neuron_output_vector
from circuitbook.model.forward import run
from circuitbook.model.maths import activation
from circuitbook.roles.scores import embed, input_effect, output_effect
from tests.circuits.conftest import make_model

WINDOW = 256  # the circuits stage's default position window (circuits.run.Settings.pos_window)


def _neo_long(n_pos: int = 320):
    """A small random GPT-Neo with more positions than the window, so the window changes the input."""
    import transformers as tf
    from circuitbook.model import from_hf_model
    from tests.circuits.conftest import _perturb

    torch.manual_seed(5)
    cfg = tf.GPTNeoConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=41, max_position_embeddings=n_pos,
                          attention_types=[[["global", "local"], 1]], window_size=8, intermediate_size=48,
                          bos_token_id=0, eos_token_id=0)
    hf = tf.GPTNeoForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    return from_hf_model(_perturb(hf))


@pytest.fixture(scope="module", params=["gpt2", "gpt_neo", "llama", "neo_long"])
def small(request):
    return _neo_long() if request.param == "neo_long" else make_model(request.param, 2, vocab=37)


def _lone_token_post(w, layer: int, pos_rows: int | None) -> torch.Tensor:
    """[V, d_mlp] hook_post of ``layer`` on each token alone, attention (all layers) and earlier MLPs zeroed,
    the position embedding replaced by the mean of W_pos[:pos_rows] (the real forward, raw weights)."""
    zero = torch.zeros_like
    iv = {f"blocks.{i}.hook_attn_out": zero for i in range(layer + 1)}
    iv.update({f"blocks.{i}.hook_mlp_out": zero for i in range(layer)})
    if w.W_pos is not None:
        mean = w.W_pos[:pos_rows].mean(0)
        iv["hook_pos_embed"] = lambda x: mean.expand_as(x)
    hook = f"blocks.{layer}.mlp.hook_post"
    return run(w, torch.arange(w.cfg.d_vocab)[:, None], [hook], iv)[hook][:, 0].float()


def _circuits_input(model, ids) -> np.ndarray:
    """[n_units, N] the circuits stage's public per-neuron input vectors, activated for plain MLPs."""
    cfg = model.cfg
    b = make_basis(model)
    rows = []
    for l in range(cfg.n_layers):
        for n in range(cfg.d_mlp):
            v = neuron_input_vector(b, l, n)[ids]
            rows.append(v if cfg.gated_mlp else activation(v, cfg.act_fn))
    return torch.stack(rows).numpy()


def _check_input(model, ids):
    w, cfg = model.weights, model.cfg
    ours = input_effect(w, ids)
    np.testing.assert_allclose(ours, _circuits_input(model, ids), rtol=1e-5, atol=1e-5)
    fwd = torch.cat([_lone_token_post(w, l, WINDOW)[ids].T for l in range(cfg.n_layers)]).numpy()
    scale = np.abs(fwd).max()
    np.testing.assert_allclose(ours, fwd, rtol=1e-4, atol=1e-4 * scale)
    return ours, scale


def test_input_effect_is_the_circuits_direct_input_on_small_models(small):
    ids = np.arange(3, small.cfg.d_vocab, 2)
    ours, scale = _check_input(small, ids)
    if small.weights.W_pos is not None and small.weights.W_pos.shape[0] > WINDOW:
        # the window matters: the mean over every position (typing's old input) is another quantity
        cfg = small.cfg
        all_pos = torch.cat([_lone_token_post(small.weights, l, None)[ids].T for l in range(cfg.n_layers)]).numpy()
        assert np.abs(ours - all_pos).max() > 1e-3 * scale


def test_input_effect_is_the_circuits_direct_input_on_the_demo(demo):
    assert demo.model.weights.W_pos.shape[0] > WINDOW
    _check_input(demo.model, np.arange(0, demo.model.cfg.d_vocab, 3))


def test_output_effect_is_the_circuits_direct_output(small):
    cfg = small.cfg
    ids = np.arange(1, cfg.d_vocab, 3)
    ours = output_effect(small.weights, ids)
    b = make_basis(small, NormScales.unit(cfg.n_layers))
    theirs = torch.stack([neuron_output_vector(b, l, n)[ids] for l in range(cfg.n_layers) for n in range(cfg.d_mlp)])
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    # independently: processed weights (final norm folded), no basis centring of the reader
    p = small.weights.processed()
    direct = torch.cat([p.W_out[l].float() @ p.W_U[:, torch.as_tensor(ids)].float() for l in range(cfg.n_layers)])
    np.testing.assert_allclose(ours, direct.numpy(), rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_embed_is_what_the_first_norm_reads(small):
    """ln1's output (raw weights, with its weight and bias removed) on a lone token at the window's mean
    position equals typing's embed of processed weights."""
    w = small.weights
    ids = np.arange(small.cfg.d_vocab)
    iv = {}
    if w.W_pos is not None:
        mean = w.W_pos[:WINDOW].mean(0)
        iv["hook_pos_embed"] = lambda x: mean.expand_as(x)
    c = run(w, torch.as_tensor(ids)[:, None], ["blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale"], iv)
    x = c["blocks.0.hook_resid_pre"][:, 0].float()
    if small.cfg.norm == "LN":
        x = x - x.mean(-1, keepdim=True)
    want = x / c["blocks.0.ln1.hook_scale"][:, 0].float()
    torch.testing.assert_close(embed(w.processed(), ids), want, rtol=1e-5, atol=1e-5)
