"""Ablations against an independent forward: transformers with hand-written PyTorch hooks, or our forward
with a hand-written intervention at a different point of the computation."""

from __future__ import annotations

import pytest
import torch

from circuitbook.errors import CircuitbookError
from circuitbook.graph import Ablation, ablate
from circuitbook.model import run

TOKS = [5, 17, 3, 44, 9, 17, 28, 3]
TARGET = 7


def _hf_logit(hf, hooks):
    handles = [reg(fn) for reg, fn in hooks]
    try:
        with torch.no_grad():
            lg = hf(torch.tensor([TOKS])).logits[0, -1].float()
    finally:
        for h in handles:
            h.remove()
    return lg


def _blocks(hf):
    return hf.transformer.h


def _attn_out_proj(block):
    return block.attn.attention.out_proj if hasattr(block.attn, "attention") else block.attn.c_proj


@pytest.mark.parametrize("name", ["neo", "gpt2"])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablations_match_transformers_hooks(request, name, mode):
    model, hf = request.getfixturevalue(name), request.getfixturevalue(name + "_hf")
    H, e = model.cfg.n_heads, model.cfg.d_head
    base = _hf_logit(hf, [])

    def neuron_hook(i, positions):
        def hook(mod, inp, out):
            out = out.clone()
            out[:, positions, i] = 0.0 if mode == "zero" else out[:, :, i].mean(1, keepdim=True)
            return out
        return hook

    def head_hook(h, positions):
        def hook(mod, args):
            x = args[0].clone()
            sl = slice(h * e, (h + 1) * e)
            x[:, positions, sl] = 0.0 if mode == "zero" else x[:, :, sl].mean(1, keepdim=True)
            return (x,)
        return hook

    def input_hook(positions):
        def hook(mod, inp, out):
            out = out.clone()
            out[:, positions] = 0.0 if mode == "zero" else out.mean(1, keepdim=True)
            return out
        return hook

    b = _blocks(hf)
    cases = [
        ("neuron/0/11/6", [(b[0].mlp.act.register_forward_hook, neuron_hook(11, [6]))]),
        ("neuron/1/5/7", [(b[1].mlp.act.register_forward_hook, neuron_hook(5, [7]))]),
        ("neuron/0/2", [(b[0].mlp.act.register_forward_hook, neuron_hook(2, slice(None)))]),
        ("head/0/1", [(_attn_out_proj(b[0]).register_forward_pre_hook, head_hook(1, slice(None)))]),
        ("head/1/2/7", [(_attn_out_proj(b[1]).register_forward_pre_hook, head_hook(2, [7]))]),
        ("input/3", [(hf.transformer.drop.register_forward_hook, input_hook([3]))]),
    ]
    for node, hooks in cases:
        r = ablate(model, TOKS, node, TARGET, mode=mode)
        after = _hf_logit(hf, hooks)
        assert r.logit_before == pytest.approx(float(base[TARGET]), abs=1e-4)
        assert r.logit_after == pytest.approx(float(after[TARGET]), abs=1e-4), node
        assert r.delta == pytest.approx(float(after[TARGET] - base[TARGET]), abs=1e-4), node
        assert r.logprob_after == pytest.approx(float(after.log_softmax(-1)[TARGET]), abs=1e-4)
        assert [t for t, *_ in r.top_after] == after.topk(5).indices.tolist()
    # several at once compose in one forward
    both = ablate(model, TOKS, ["neuron/0/11/6", "head/0/1"], TARGET, mode=mode)
    after = _hf_logit(hf, cases[0][1] + cases[3][1])
    assert both.logit_after == pytest.approx(float(after[TARGET]), abs=1e-4)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_head_from_one_source(neo, mode):
    """Removing one source position's term equals, for zero, zeroing that pattern entry without
    renormalising; for mean, swapping the value vector of that source (checked in a run where only that
    query's output can matter: the last layer at the target position)."""
    l, h, q, k = 1, 2, len(TOKS) - 1, 5  # layer 1 is local (window 3): keys 5..7
    r = ablate(neo, TOKS, f"head/{l}/{h}/{q}/{k}", TARGET, mode=mode)
    if mode == "zero":
        def fn(p):
            p = p.clone()
            p[:, h, q, k] = 0.0
            return p
        iv = {f"blocks.{l}.attn.hook_pattern": fn}
    else:
        def fn(v):
            v = v.clone()
            v[:, k, h] = v[:, :, h].mean(1)
            return v
        iv = {f"blocks.{l}.attn.hook_v": fn}  # last layer: other queries do not reach logit[q]
    want = run(neo.weights, torch.tensor([TOKS]), ["logits"], iv)["logits"][0, -1, TARGET]
    assert r.logit_after == pytest.approx(float(want), abs=1e-4)
    assert abs(r.delta) > 1e-4  # it did something


def test_ablation_on_ts1l_and_errors(ts1l):
    prompt = "Once upon a time, there was a little girl named Lily. She"
    r = ablate(ts1l, prompt, Ablation("head", 0, 9))
    assert r.target_str == " was" and r.delta < 0 and r.top_before[0][1] == " was"
    c = ablate(ts1l, prompt, "input/13", " was", contrast=" loved")
    assert c.contrast is not None and c.logit_before != r.logit_before
    for bad, msg in [("head/3/0", "layer"), ("neuron/0/99999/1", "does not exist"), ("input/99", "position"),
                     ("head/0/1/2/5", "after query"), ("bogus/1", "cannot"), ("neuron/x/1", "cannot read")]:
        with pytest.raises(CircuitbookError, match=msg):
            ablate(ts1l, prompt, bad)
    with pytest.raises(CircuitbookError, match="mode"):
        ablate(ts1l, prompt, "input/1", mode="resample")
