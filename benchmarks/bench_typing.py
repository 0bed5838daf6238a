"""Typing time for a 4096-neuron model on the shared stories, against one forward pass over the same tokens.

    python benchmarks/bench_typing.py [--stories 300] [--d-model 1024] [--d-mlp 4096]

Builds a planted GPT-Neo with TinyStories-1Layer-21M's shape (d_model 1024, 16 heads, 4096 neurons, GPT-2
vocabulary; ``demo.planted``: 12 planted rules among random-direction noise neurons), tags the first
``--stories`` shared stories once, then times in one run:

  * the anchor: one full forward (to the logits) over the same stories, same batches;
  * ``type_model``: its activation pass (to the MLP taps, with the 512 null units per layer) and the
    classification (targets, screen-then-confirm, calibration on null units, content tests);
and prints typing / forward, with the sweep figures of this one model (recall per rule kind, noise
false-positive rate). Tagging is reported apart (it depends on spaCy, not on the model, and is cached in a
book).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ASSETS = ROOT.parent / "shared" / "assets"
STORIES = ASSETS / "tinystories-text" / "TinyStories-valid.prefix-1841stories.txt"

from machine import header, load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", type=int, default=300)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--d-mlp", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    header()
    from circuitbook.corpus import batches, read_stories
    from circuitbook.demo.planted import build_planted, evaluate_typing
    from circuitbook.model.tokenizer import Tokenizer
    from circuitbook.roles.pos import token_classes
    from circuitbook.roles.run import stories_id, type_model

    tok = Tokenizer.from_dir(ASSETS / "gpt2-tokenizer")
    stories = list(islice(read_stories(STORIES), a.stories))
    t = time.perf_counter()
    tc = token_classes(stories, tok, progress=False, source={"corpus": stories_id(stories)})
    print(f"tagging {len(stories)} stories ({tc.source['n_tokens']} tokens): {time.perf_counter() - t:.1f} s {load()}")
    pl = build_planted(tok, tc, a.seed, d_model=a.d_model, d_mlp=a.d_mlp, n_heads=16, n_rules=12)
    m = pl.model
    with torch.inference_mode():
        t = time.perf_counter()
        n_tok = 0
        for b in batches(stories, tok, 256, 16):
            m.run(b.tokens, ["logits"])
            n_tok += int(b.mask.sum())
        fwd = time.perf_counter() - t
    print(f"anchor: one forward to the logits over {n_tok} tokens: {fwd:.1f} s ({n_tok / fwd:.0f} tok/s) {load()}")
    t = time.perf_counter()
    res = type_model(m, stories, classes=tc, progress=False)
    typ = time.perf_counter() - t
    print(f"type_model ({a.d_mlp} neurons, d_model {a.d_model}): {typ:.1f} s = {typ / fwd:.2f} x one forward {load()}")
    ev = evaluate_typing(pl, res.types, tc)
    print("recall per rule kind:", {k: f"{v['hits']}/{v['n']}" for k, v in ev["kinds"].items()},
          f"noise typed {ev['noise_typed']}/{ev['noise']}")


if __name__ == "__main__":
    main()
