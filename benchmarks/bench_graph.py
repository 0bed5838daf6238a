"""Attribution-graph latency for a 64-token prompt (target: < 1 s on CPU), against a plain forward.

Models: the exact TinyStories-1Layer-21M config with random weights, the 2-layer 33M config (random
weights), and ts-1l-dev (real trained weights, ../shared/assets). For each it prints the best-of-N wall
time of: a transformers forward to logits (anchor), ``attribute`` with the default budget (40 nodes,
150 edges), ``attribute`` with 200 nodes / 1000 edges and every input kept, rendering JSON + SVG,
``ablate`` of the top node, and ``predict`` (top-5 at every position), with ratios against the anchor.
Usage: python benchmarks/bench_graph.py [--seq 64] [--reps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from circuitbook.graph import ablate, attribute, predict, to_json, to_svg
from circuitbook.model import from_hf_model, load_model

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


def timed(fn, reps):
    """Best-of-reps (wall seconds, CPU seconds of this process). On a shared machine the CPU time is the
    better guide: with --threads 1 it is what the wall time would be on one quiet core."""
    fn()  # warm-up
    best, best_cpu = float("inf"), float("inf")
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return best, best_cpu


def bench(name, hf, model, toks, reps):
    with torch.inference_mode():
        t_fwd = timed(lambda: hf(toks[None]).logits, reps)
    g = attribute(model, toks)
    rows = [
        ("transformers forward (anchor)", t_fwd),
        ("attribute, 40 nodes / 150 edges", timed(lambda: attribute(model, toks), reps)),
        ("attribute, 200 nodes / 1000 edges + inputs",
         timed(lambda: attribute(model, toks, max_nodes=200, max_edges=1000, keep_inputs=True), reps)),
        ("render JSON + SVG", timed(lambda: (json.dumps(to_json(g)), to_svg(g)), reps)),
        ("ablate top node", timed(lambda: ablate(model, toks, g.nodes[0].id, g.target), reps)),
        ("predict top-5 every position", timed(lambda: predict(model, toks, 5), reps)),
    ]
    print(f"{name}: {toks.numel()} tokens, target {g.target_str!r} logit {g.logit:.3f}, "
          f"{g.n_candidates} candidate nodes, {torch.get_num_threads()} threads")
    print(f"  {'':44s} {'wall ms':>9s} {'cpu ms':>9s}  cpu vs anchor")
    for label, (t, c) in rows:
        print(f"  {label:44s} {t * 1000:9.1f} {c * 1000:9.1f}  x{c / t_fwd[1]:5.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    from machine import header

    header()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    torch.manual_seed(0)
    for layers, name in [(1, "TinyStories-1Layer-21M config (random)"), (2, "TinyStories-2Layers-33M config (random)")]:
        cfg = GPTNeoConfig(vocab_size=50257, hidden_size=1024, num_layers=layers, num_heads=16,
                           attention_types=[[["global", "local"][:layers], 1]], window_size=256,
                           intermediate_size=None)
        hf = GPTNeoForCausalLM(cfg).eval()
        bench(name, hf, from_hf_model(hf), torch.randint(0, 50257, (a.seq,)), a.reps)
        del hf
    d = ASSETS / "ts-1l-dev"
    if d.exists():
        model = load_model(d)
        text = (ASSETS / "tinystories-text" / "TinyStories-valid.prefix-1841stories.txt").read_text("utf-8-sig")
        toks = model.to_tokens(text)[0, : a.seq]
        hf = GPTNeoForCausalLM.from_pretrained(d).eval()
        bench("ts-1l-dev (real weights, a real story)", hf, model, toks, a.reps)
    else:
        print(f"(skipping ts-1l-dev: {d} not found)")


if __name__ == "__main__":
    main()
