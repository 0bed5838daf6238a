"""``circuitbook demo``: the main job end to end on the embedded model, whose truth is known.

Each step prints what it found next to what was planted, so a user sees the tool work before
pointing it at TinyStories.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..corpus import batches
from .model import build_demo


def mean_loss(model, stories, interventions=None, batch_size: int = 32) -> float:
    tot, n = 0.0, 0
    for b in batches(stories, model.tokenizer, 256, batch_size):
        lp = model.log_probs(b.tokens, interventions)
        m = b.mask[:, 1:]
        tot -= float((lp * m).sum())
        n += int(m.sum())
    return tot / n


def run_demo(out_dir: str | Path = "circuitbook-demo", seed: int = 0, echo=print) -> dict:
    out = Path(out_dir)
    demo = build_demo(seed=seed)
    demo.write(out)
    model, truth = demo.model, demo.truth
    echo(f"[1/1] model: handcrafted 1-layer GPT-Neo, d_model {model.cfg.d_model}, {model.cfg.n_heads} heads, "
         f"{model.cfg.d_mlp} neurons, vocab {model.cfg.d_vocab}; corpus: {len(demo.stories)} generated stories")
    echo(f"      written to {out}/ (HF checkpoint, tokenizer.json, stories.txt, truth.json)")
    base = mean_loss(model, demo.stories)
    echo(f"      loss {base:.3f} nats/token; planted: " + ", ".join(
        f"{k} = neuron {truth[k]}" for k in ("pronoun_verb", "article_noun", "search")) +
        f", copy head = head {truth['copy_head']}")
    results = {"loss": base, "truth": truth, "ablations": {}}
    for name in ("pronoun_verb", "article_noun", "search"):
        i = truth[name]

        def ablate(x, i=i):
            x = x.clone()
            x[..., i] = 0
            return x

        d = mean_loss(model, demo.stories, {"blocks.0.mlp.hook_post": ablate}) - base
        results["ablations"][name] = d
        echo(f"      zero-ablating {name} neuron {i}: loss +{d:.3f}")
    return results
