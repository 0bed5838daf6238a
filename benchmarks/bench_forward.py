"""Forward throughput on the exact TinyStories-1Layer-21M config (random weights), against transformers.

Prints tokens/s for: transformers GPTNeoForCausalLM (anchor), our forward to logits, and our forward
stopping at the MLP activations (what a neuron scan needs), with ratios against the anchor.
Usage: python benchmarks/bench_forward.py [--batch 8] [--seq 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from circuitbook.model import from_hf_model, run


def timed(fn, reps):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from machine import header

    header()
    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=1024, num_layers=1, num_heads=16,
                       attention_types=[[["global"], 1]], window_size=256, intermediate_size=None)
    hf = GPTNeoForCausalLM(cfg).eval()
    w = from_hf_model(hf).weights
    toks = torch.randint(0, 50257, (a.batch, a.seq))
    n = toks.numel()
    with torch.inference_mode():
        t_hf = timed(lambda: hf(toks).logits, a.reps)
    t_ours = timed(lambda: run(w, toks, ["logits"]), a.reps)
    t_mlp = timed(lambda: run(w, toks, ["blocks.0.mlp.hook_post"]), a.reps)
    print(f"TinyStories-1Layer-21M config, batch {a.batch} x {a.seq} tokens, {torch.get_num_threads()} threads")
    print(f"  transformers forward (anchor)     {n / t_hf:9.0f} tok/s")
    print(f"  circuitbook forward -> logits     {n / t_ours:9.0f} tok/s   x{t_hf / t_ours:.2f} vs anchor")
    print(f"  circuitbook forward -> MLP taps   {n / t_mlp:9.0f} tok/s   x{t_hf / t_mlp:.2f} vs anchor")


if __name__ == "__main__":
    main()
