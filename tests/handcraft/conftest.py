from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo():
    from circuitbook.demo import build_demo

    return build_demo(seed=0, d_mlp=32, n_stories=120)


@pytest.fixture(scope="session")
def demo_fit(demo):
    from circuitbook.corpus import batches

    return lambda: batches(demo.stories[:60], demo.model.tokenizer, 256, 16)


@pytest.fixture(scope="session")
def demo_eval(demo):
    from circuitbook.corpus import batches

    return lambda: batches(demo.stories[60:], demo.model.tokenizer, 256, 16)


# --------------------------------------------------------------------------- dictionary features, by hand
def random_dictionary(kind: str, d_model: int, n: int = 24, activation: str = "relu", k: int = 3, seed: int = 0):
    """A seeded random dictionary of the demo's width whose features fire on a fair share of tokens."""
    import torch

    from circuitbook.dictionary import Dictionary, DictionaryConfig

    g = torch.Generator().manual_seed(seed)
    cfg = DictionaryConfig(kind, 0, d_model, n, activation, k=k if activation == "topk" else None)
    t = {"W_enc": torch.randn(d_model, n, generator=g) / d_model ** 0.5, "b_enc": torch.randn(n, generator=g) * 0.1,
         "W_dec": torch.randn(n, d_model, generator=g) * 0.3, "b_dec": torch.randn(d_model, generator=g) * 0.05}
    if kind == "skip-transcoder":
        t["W_skip"] = torch.randn(d_model, d_model, generator=g) * 0.02
    return Dictionary.from_tensors(cfg, t)


def hand_tensors(d):
    """The dictionary's raw tensors (float64), read once: the hand computations below use nothing else."""
    return {k: v.detach().double() for k, v in d.tensors().items()}


def hand_encode(t: dict, x, activation: str, k: int | None):
    """Feature activations computed from the raw tensors: x @ W_enc + b_enc, then ReLU, or TopK then ReLU."""
    import torch

    pre = x.double() @ t["W_enc"] + t["b_enc"]
    if activation == "relu":
        return pre.clamp_min(0)
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.clamp_min(0))


def hand_decode(t: dict, f, x):
    y = f.double() @ t["W_dec"] + t["b_dec"]
    return y + x.double() @ t["W_skip"].T if "W_skip" in t else y


def hand_mlp_input(weights, resid_mid):
    """LN2 of resid_mid by torch's own layer_norm (the demo models are GPT-Neo: LayerNorm with bias)."""
    import torch.nn.functional as F

    d = weights.cfg.d_model
    return F.layer_norm(resid_mid.double(), (d,), weights.ln2_w[0].double(), weights.ln2_b[0].double(),
                        weights.cfg.eps)


def hand_loss(weights, batches, d, edit, error: str, add=None) -> float:
    """Mean next-token CE with layer 0's MLP output replaced, computed by hand from the dictionary's tensors:
    x = LN2(resid_mid) (an SAE: mlp_out), f = encode(x), out = decode(edit(f), x) (+ add(LN2 input))
    (+ mlp_out - decode(f, x) when error == "keep")."""
    import torch

    from circuitbook.model import run

    t, cfg = hand_tensors(d), d.cfg
    tot, n = 0.0, 0
    for b in batches:
        box = {}

        def cap(r):
            box["x"] = hand_mlp_input(weights, r)
            return r

        def rep(out):
            x = out.double() if cfg.kind == "sae" else box["x"]
            f = hand_encode(t, x, cfg.activation, cfg.k)
            y = hand_decode(t, edit(f), x)
            if add is not None:
                y = y + add(box["x"])
            if error == "keep":
                y = y + out.double() - hand_decode(t, f, x)
            return y.to(out.dtype)

        logits = run(weights, b.tokens, ("logits",), {"blocks.0.hook_resid_mid": cap, "blocks.0.hook_mlp_out": rep})
        lp = logits["logits"][:, :-1].double().log_softmax(-1).gather(-1, b.tokens[:, 1:, None])[..., 0]
        m = b.mask[:, 1:]
        tot -= float(lp[m].sum())
        n += int(m.sum())
    return tot / n


def hand_feature_means(weights, batches, d):
    """Every feature's mean activation over the real positions, by hand."""
    import torch

    from circuitbook.model import run

    t, cfg = hand_tensors(d), d.cfg
    tot, n = 0.0, 0
    for b in batches:
        tap = "blocks.0.hook_mlp_out" if cfg.kind == "sae" else "blocks.0.hook_resid_mid"
        x = run(weights, b.tokens, (tap,))[tap]
        x = x.double() if cfg.kind == "sae" else hand_mlp_input(weights, x)
        tot = tot + hand_encode(t, x, cfg.activation, cfg.k)[b.mask].sum(0)
        n += int(b.mask.sum())
    return tot / n


def keep_only(keep, fill):
    """edit(f): features in ``keep`` as they are, the others set to ``fill`` [n] (zeros or means)."""
    import torch

    def edit(f):
        out = fill.to(f).expand_as(f).clone()
        idx = torch.tensor(sorted(keep), dtype=torch.long)
        out[..., idx] = f[..., idx]
        return out

    return edit
