import torch

from circuitbook.handcraft import (ablate_heads, ablate_neurons, add_neurons, mean_loss, replace_head, replace_neuron,
                                   resample_interventions, unit_means)
from circuitbook.model import load_model, run


def test_replace_neuron_with_its_own_weights_is_exact(demo, demo_eval):
    w = demo.model.weights
    i = demo.truth["pronoun_verb"]
    w2 = replace_neuron(w, 0, i, w.W_in[0, :, i].clone(), w.b_in[0, i].clone(), w.W_out[0, i].clone())
    assert w2.W_in is not w.W_in
    assert mean_loss(w2, demo_eval()) == mean_loss(w, demo_eval())
    # and through the spec: direction rules reuse the neuron's own vectors exactly
    from circuitbook.handcraft import build, parse_spec

    spec = parse_spec({"neurons": [{"replaces": i, "input": {"direction": {"neuron": i}},
                                    "output": {"direction": {"neuron": i}}, "bias": "keep"}]})
    b = build(spec, demo.model, demo_eval)
    assert mean_loss(b.weights, demo_eval()) == mean_loss(w, demo_eval())


def _brute_means(w, batches):
    """Average activations with plain Python loops over every real position."""
    post, res, n = 0.0, 0.0, 0
    for b in batches:
        o = run(w, b.tokens, ["blocks.0.mlp.hook_post", "blocks.0.attn.hook_result"])
        for r in range(b.tokens.shape[0]):
            for p in range(b.tokens.shape[1]):
                if b.mask[r, p]:
                    post = post + o["blocks.0.mlp.hook_post"][r, p].double()
                    res = res + o["blocks.0.attn.hook_result"][r, p].double()
                    n += 1
    return post / n, res / n


def test_ablation_baselines_match_brute_force(demo, demo_fit, demo_eval):
    w = demo.model.weights
    means = unit_means(w, demo_fit())
    post, res = _brute_means(w, demo_fit())
    assert torch.allclose(means.neuron[0].double(), post, atol=1e-5)
    assert torch.allclose(means.head[0].double(), res, atol=1e-5)
    idx, heads = [demo.truth["pronoun_verb"], 3], [demo.truth["copy_head"]]

    def set_neurons(x, value):
        x = x.clone()
        x[..., idx] = value
        return x

    def set_heads(x, value):
        x = x.clone()
        x[:, :, heads] = value
        return x

    for mode in ("zero", "mean"):
        wa = ablate_heads(ablate_neurons(w, 0, idx, mode, means), 0, heads, mode, means)
        nv = 0.0 if mode == "zero" else post[idx].float()
        hv = 0.0 if mode == "zero" else res[heads].float()
        iv = {"blocks.0.mlp.hook_post": lambda x: set_neurons(x, nv),
              "blocks.0.attn.hook_result": lambda x: set_heads(x, hv)}
        for b in demo_eval():
            a = run(wa, b.tokens)["logits"]
            ref = run(w, b.tokens, interventions=iv)["logits"]
            assert torch.allclose(a, ref, atol=1e-4), mode
        assert abs(mean_loss(wa, demo_eval())[0] - mean_loss(w, demo_eval(), iv)[0]) < 1e-5
    # the original is untouched
    assert mean_loss(w, demo_eval()) == mean_loss(demo.model.weights, demo_eval())


def test_resample_changes_only_the_named_units(demo, demo_eval):
    w = demo.model.weights
    i = demo.truth["article_noun"]
    iv = resample_interventions([("neuron", 0, i)], seed=1)
    b = next(iter(demo_eval()))
    base = run(w, b.tokens, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"]
    out = run(w, b.tokens, ["blocks.0.mlp.hook_post"], iv)["blocks.0.mlp.hook_post"]
    other = [j for j in range(w.cfg.d_mlp) if j != i]
    assert torch.equal(out[..., other], base[..., other])
    assert not torch.equal(out[..., i], base[..., i])
    assert sorted(out[..., i].flatten().tolist()) == sorted(base[..., i].flatten().tolist())


def test_added_and_replaced_parts_export_to_transformers(demo, tmp_path):
    transformers = __import__("pytest").importorskip("transformers")
    w = demo.model.weights
    g = torch.Generator().manual_seed(0)
    d = w.cfg.d_model
    w2, idx = add_neurons(w, 0, torch.randn(d, 2, generator=g), torch.zeros(2), torch.randn(2, d, generator=g) * 0.1)
    assert idx == [w.cfg.d_mlp, w.cfg.d_mlp + 1] and w2.cfg.d_mlp == w.cfg.d_mlp + 2
    e = w.cfg.d_head
    w2 = replace_head(w2, 0, 1, *(torch.randn(d, e, generator=g) * 0.1 for _ in range(3)),
                      torch.randn(e, d, generator=g) * 0.1)
    from circuitbook.handcraft import save_checkpoint

    out = save_checkpoint(w2, demo.model, tmp_path / "hc")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    toks = demo.model.to_tokens("Once upon a time he saw the big dog . They ran")
    ours = run(w2, toks)["logits"].log_softmax(-1)
    with torch.no_grad():
        theirs = hf(toks).logits.float().log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-4)
    back = load_model(out)
    assert torch.allclose(run(back.weights, toks)["logits"].log_softmax(-1), ours, atol=1e-5)
