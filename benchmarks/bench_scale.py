"""Scale-out speed: one process vs the local executor vs Ray on this machine, and the single-GPU scan.

    python benchmarks/bench_scale.py [--stories 1841] [--shards 2] [--skip-ray] [--gpu-tokens 2000000]

CPU part (always): ``circuitbook scan`` of ts-1l-dev over the first --stories shared stories, each variant a
fresh CLI subprocess into a fresh book, wall time from launch to exit (model loading, tokenizing, merge
included):
  * one process (torch on every core): the anchor;
  * ``--shards N --executor local`` (N worker processes, the cores split between them);
  * ``--shards N --executor ray`` on a local Ray started for the run (``--ray-cpus`` = the cores): the engine's
    overhead over the local executor is the ratio of the two.
Every merged book is checked to hold the same token count as the anchor's (the tests check every table).

GPU part (only where ``torch.cuda.is_available()``): the TinyStories-1Layer-21M config (random weights) over
a prefix of the shared stories repeated to --gpu-tokens, in fp32 and bf16: the scan's tokens/s
(``scan_corpus`` end to end), the bare forward with the scan's taps over the same batches, and the matmul
bound (the forward's FLOPs at the rate of a large matmul in that dtype measured in the same run), with the
wall time extrapolated to the 470M tokens of TinyStories' training set. Without a GPU it says so.
The machine may be shared: the load average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, load  # noqa: E402

ASSETS = ROOT.parent / "shared" / "assets"
STORIES = ASSETS / "tinystories-text" / "TinyStories-valid.prefix-1841stories.txt"
DEV = ASSETS / "ts-1l-dev"
TRAIN_TOKENS = 470e6


def prefix_corpus(n: int, out: Path) -> Path:
    from circuitbook.corpus import SEPARATOR, read_stories

    stories = [s for _, s in zip(range(n), read_stories(STORIES))]
    out.write_text(f"\n{SEPARATOR}\n".join(stories) + "\n")
    return out


def tokens_of(book: Path) -> int:
    """Tokens the book's scan counted (every neuron sees every token: neuron 0's count)."""
    c = sqlite3.connect(f"file:{book}?mode=ro", uri=True)
    try:
        row = c.execute("SELECT count FROM scan_neurons WHERE layer = 0 AND idx = 0").fetchone()
        return int(row[0]) if row else -1
    finally:
        c.close()


def cli_scan(corpus: Path, book: Path, extra: list[str]) -> float:
    argv = [sys.executable, "-m", "circuitbook.cli", "scan", str(DEV), "--corpus", str(corpus), "--book", str(book),
            "--no-progress", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    sec = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return sec


def cpu_part(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        corpus = prefix_corpus(args.stories, d / "stories.txt")
        n, cores = args.shards, os.cpu_count()
        variants = [("one process", []), (f"local, {n} shards", ["--shards", str(n), "--executor", "local"])]
        if not args.skip_ray:
            variants.append((f"ray, {n} shards", ["--shards", str(n), "--executor", "ray",
                                                  "--ray-cpus", str(cores)]))
        rows = []
        for name, extra in variants:
            book = d / f"{len(rows)}.db"
            before = load()
            sec = cli_scan(corpus, book, extra)
            rows.append((name, sec, tokens_of(book), before, load()))
        base_sec, base_tok = rows[0][1], rows[0][2]
        print(f"\nts-1l-dev over {args.stories} shared stories ({base_tok:,} tokens), wall time of the CLI:")
        for name, sec, tok, before, after in rows:
            same = "same tokens" if tok == base_tok else f"TOKENS DIFFER ({tok:,})"
            print(f"  {name:<18} {sec:7.1f} s  {base_tok / sec:8,.0f} tok/s  x{base_sec / sec:4.2f} of one process  "
                  f"{same}  {before} -> {after}")
        times = dict((r[0], r[1]) for r in rows)
        if not args.skip_ray:
            print(f"  ray over local: x{times[f'ray, {n} shards'] / times[f'local, {n} shards']:.2f} wall time "
                  f"(the engine's overhead on {n} shards)")


def matmul_rate(dtype, n: int = 8192, reps: int = 20) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on the GPU: the bound the forward is compared with."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def gpu_model(dtype):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from circuitbook.model import Tokenizer, from_hf_model

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=1024, num_layers=1, attention_types=[[["global"], 1]],
                       num_heads=16, intermediate_size=4096, max_position_embeddings=2048, window_size=256)
    m = from_hf_model(GPTNeoForCausalLM(cfg).eval(), Tokenizer.from_dir(DEV, bos_id=50256), source="random-1L-21M")
    return m.with_weights(m.weights.to(device="cuda", dtype=dtype))


def gpu_bare(model, corpus: Path, s) -> tuple[int, float, float]:
    """(tokens, seconds, matmul FLOPs) of the bare forward with the scan's taps over the scan's batches."""
    from bench_scan import forward_flops, tensors

    from circuitbook.corpus import read_stories
    from circuitbook.scan.run import shard_batches

    cfg = model.cfg
    taps = [f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in ("attn.hook_pattern", "mlp.hook_post")]
    model.run(torch.zeros(1, 16, dtype=torch.long), taps)
    torch.cuda.synchronize()
    t0, n, flops = time.perf_counter(), 0, 0.0
    for _, group in shard_batches(read_stories(corpus), model.tokenizer, s):
        tok, mask = tensors(group)
        model.run(tok.pin_memory().to("cuda", non_blocking=True), taps)
        n += int(mask[:, 1:].sum())
        flops += forward_flops(cfg, mask.sum(1).double())
    torch.cuda.synchronize()
    return n, time.perf_counter() - t0, flops


def gpu_part(args) -> None:
    if not torch.cuda.is_available():
        print("\nGPU part: no CUDA device on this machine: skipped (run this script where one is)")
        return
    from circuitbook.corpus import SEPARATOR, read_stories
    from circuitbook.scan import ScanSettings, scan_corpus

    stories = list(read_stories(STORIES))
    print(f"\nGPU part: {torch.cuda.get_device_name()}, 1L-21M config (random weights), {args.gpu_tokens:,} tokens")
    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "c.txt"
        reps = max(1, args.gpu_tokens // 300_000 + 1)  # the shared stories hold about 330k tokens
        corpus.write_text(f"\n{SEPARATOR}\n".join(stories * reps) + "\n")
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = gpu_model(dtype)
            s = ScanSettings(batch_size=args.gpu_batch, max_tokens=args.gpu_tokens, max_len=512)
            t0 = time.perf_counter()
            summ = scan_corpus(model, corpus, Path(d) / f"{name}.db", s, progress=False)
            scan_tps = summ.tokens / (time.perf_counter() - t0)
            n, sec, flops = gpu_bare(model, corpus, s)
            bound = matmul_rate(dtype) / (flops / n)
            print(f"  {name}: scan {scan_tps:,.0f} tok/s (end to end), bare forward {n / sec:,.0f} tok/s "
                  f"(scan x{scan_tps / (n / sec):.2f} of it), matmul bound {bound:,.0f} tok/s (bare forward at "
                  f"{n / sec / bound:.2f}, scan at {scan_tps / bound:.3f}); 470M tokens at the scan's rate: "
                  f"{TRAIN_TOKENS / scan_tps / 3600:.1f} h {load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stories", type=int, default=1841, help="shared stories scanned in the CPU part")
    ap.add_argument("--shards", type=int, default=2, help="shards of the executor variants")
    ap.add_argument("--skip-ray", action="store_true", help="leave out the Ray variant")
    ap.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    ap.add_argument("--gpu-tokens", type=int, default=2_000_000, help="tokens of the GPU part")
    ap.add_argument("--gpu-batch", type=int, default=64, help="sequences per batch on the GPU")
    args = ap.parse_args()
    header()
    if not args.skip_cpu:
        cpu_part(args)
    gpu_part(args)


if __name__ == "__main__":
    main()
