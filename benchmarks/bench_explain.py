"""Explain + score every neuron of a 1L-21M-shaped book (random weights, real scan) and count forwards.

    python benchmarks/bench_explain.py [--scan-tokens 20000] [--stories 20] [--ablation-tokens 64] [--no-ablation]

Builds a GPT-Neo with TinyStories-1Layer-21M's shape (d_model 1024, 16 heads, 4096 neurons) and random
weights, scans the first stories of the shared corpus into a fresh book, then times

  * ``explain_book`` over all 4096 neurons and 16 heads (offline; output effects from the weights), with
    the typing gate off (the book is not typed: every token rule that fits is proposed);
  * ``score_book`` on held-out stories (the corpus's last ``--stories``), reporting the forward passes it
    used against the bound of one forward per scoring batch (the fast path computes last-layer neuron
    ablations from the final residual; heads need two forwards of the ablation sequences each).

Timings on a shared machine are not meaningful; the forward counts are.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ASSETS = ROOT.parent / "shared" / "assets"
STORIES = ASSETS / "tinystories-text" / "TinyStories-valid.prefix-1841stories.txt"
DEV = ASSETS / "ts-1l-dev"


def model_21m():
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from circuitbook.model import Tokenizer, from_hf_model

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=1024, num_layers=1, attention_types=[[["global"], 1]],
                       num_heads=16, intermediate_size=4096, max_position_embeddings=2048, window_size=256)
    return from_hf_model(GPTNeoForCausalLM(cfg).eval(), Tokenizer.from_dir(DEV, bos_id=50256), source="random-1L-21M")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scan-tokens", type=int, default=20000)
    ap.add_argument("--stories", type=int, default=20, help="held-out stories (the corpus's last N)")
    ap.add_argument("--ablation-tokens", type=int, default=64)
    ap.add_argument("--no-ablation", action="store_true", help="skip the ablation scores (a quick check)")
    a = ap.parse_args()

    from circuitbook.book import Book
    from circuitbook.corpus import read_stories
    from circuitbook.explain import explain_book, score_book
    from circuitbook.explain.propose import ProposeSettings
    from circuitbook.explain.score import ScoreSettings
    from circuitbook.scan import scan_corpus

    stories = list(read_stories(STORIES))
    held = stories[-a.stories:]
    model = model_21m()
    with tempfile.TemporaryDirectory() as d:
        book = Book.open(Path(d) / "b.db")
        t0 = time.time()
        scan_corpus(model, stories[:-a.stories], book, max_tokens=a.scan_tokens, progress=False)
        t_scan = time.time() - t0
        t0 = time.time()
        s = explain_book(book, model, ProposeSettings(require_typing=False))
        t_explain = time.time() - t0
        t0 = time.time()
        r = score_book(book, model, held, ScoreSettings(ablation_tokens=a.ablation_tokens, ablation=not a.no_ablation))
        t_score = time.time() - t0
    print(f"scan {a.scan_tokens} tokens: {t_scan:.1f} s")
    print(f"explain: {s} ({t_explain:.1f} s, {t_explain / max(s.n_units, 1) * 1000:.1f} ms/unit)")
    print(f"score: {len(r.scores)} explanations in {t_score:.1f} s; {r.forwards} forward passes for "
          f"{r.batches} scoring batches (bound: {r.batches}; the rest: 1 reference + 2 per head on the ablation "
          f"sequences)")
    print(r.summary())


if __name__ == "__main__":
    main()
