"""Neuron input effects against the real forward (attention/MLP outputs zeroed or isolated, scales frozen)."""

import pytest
import torch

from circuitbook.circuits import NormScales, make_basis, neuron_input_effect, neuron_input_effects, neuron_input_vector
from circuitbook.circuits.neuron_in import input_paths
from circuitbook.model.forward import run

S_LN2 = 1.9


def zero(x):
    return torch.zeros_like(x)


def test_direct_input_is_the_neuron_value_on_a_lone_token(any_model):
    w = any_model.weights
    cfg = w.cfg
    V, l = cfg.d_vocab, cfg.n_layers - 1
    iv = {f"blocks.{i}.hook_attn_out": zero for i in range(cfg.n_layers)}
    iv.update({f"blocks.{i}.hook_mlp_out": zero for i in range(l)})
    if w.W_pos is not None:
        mean = w.W_pos[:256].mean(0)
        iv["hook_pos_embed"] = lambda x: mean.expand_as(x)
    hook = f"blocks.{l}.mlp." + ("hook_post" if cfg.gated_mlp else "hook_pre")
    acts = run(w, torch.arange(V)[:, None], [hook], iv)[hook][:, 0]  # [V, d_mlp]
    for n in (0, 7):
        torch.testing.assert_close(neuron_input_vector(any_model, l, n), acts[:, n], atol=1e-4, rtol=1e-4)
    e = neuron_input_effects(any_model, l, k=3)
    assert torch.equal(e.top.ids, acts.T.topk(3, dim=-1).indices)
    assert torch.equal(e.bottom.ids, acts.T.topk(3, dim=-1, largest=False).indices)
    torch.testing.assert_close(e.norms, acts.norm(dim=0), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("which", ["neo_1l", "gpt2_2l", "llama_2l"])
def test_input_through_a_head(which, request):
    """Sequence [t, q]: head h attends only to t; the change in the neuron's pre-activation (the gate's, for
    gated MLPs) at q between keeping and zeroing that head's output, with ln2's scale frozen."""
    model = request.getfixturevalue(which)
    w = model.weights
    cfg = w.cfg
    l, h = cfg.n_layers - 1, 2
    lh = 0  # the head's layer
    V = cfg.d_vocab
    b = make_basis(model, NormScales([1.0] * cfg.n_layers, [S_LN2] * cfg.n_layers, 1.0))
    toks = torch.stack([torch.arange(V), torch.full((V,), 1)], 1)

    def pattern(p):
        p = p.clone()
        p[:, h] = 0
        p[:, h, :, 0] = 1
        return p

    def pre(keep):
        def only_h(r):
            out = torch.zeros_like(r)
            if keep:
                out[:, :, h] = r[:, :, h]
            return out
        iv = {f"blocks.{lh}.attn.hook_pattern": pattern, f"blocks.{lh}.attn.hook_result": only_h,
              f"blocks.{l}.ln2.hook_scale": lambda x: torch.full_like(x, S_LN2)}
        if w.W_pos is not None:
            mean = w.W_pos[:256].mean(0)
            iv["hook_pos_embed"] = lambda x: mean.expand_as(x)
        for i in range(lh + 1, cfg.n_layers):
            iv[f"blocks.{i}.hook_attn_out"] = zero
        for i in range(l):
            iv[f"blocks.{i}.hook_mlp_out"] = zero
        return run(w, toks, [f"blocks.{l}.mlp.hook_pre"], iv)[f"blocks.{l}.mlp.hook_pre"][:, 1]  # [V, d_mlp]

    diff = pre(True) - pre(False)
    # the head's output also carries (ln1_b @ W_V + b_V) @ W_O whatever token it attends to; the input effect
    # is the token-dependent part, so compare centred over tokens
    diff = diff - diff.mean(0)
    for n in (1, 11):
        mine = neuron_input_vector(b, l, n, via=(lh, h))
        torch.testing.assert_close(mine - mine.mean(), diff[:, n], atol=1e-4, rtol=1e-4)
    e = neuron_input_effect(b, l, 11, via=(lh, h), k=2)
    assert torch.equal(e.top_ids, diff[:, 11].topk(2).indices) and e.via == (lh, h)


def test_input_paths(gpt2_2l, neo_1l):
    assert input_paths(neo_1l.cfg, 0) == [None] + [(0, h) for h in range(4)]
    assert len(input_paths(gpt2_2l.cfg, 1)) == 1 + 8


def test_demo_planted_neurons_read_their_classes(demo):
    for name in ("pronoun_verb", "article_noun", "search"):
        reads = set(demo.truth["rules"][name]["reads"])
        e = neuron_input_effect(demo.model, 0, demo.truth[name], k=len(reads))
        assert set(e.top_ids.tolist()) == reads, name
