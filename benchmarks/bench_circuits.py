"""Full-vocabulary OV and QK tops for all heads of the TinyStories-1Layer-21M config (random weights).

Config (--config 21m): GPT-Neo, 1 layer, vocab 50257, d_model 1024, 16 heads of 64, 4096 neurons, 2048
positions; --config 512x8 / 512x16: d_model 512, 2048 neurons, 8 or 16 heads (the dev / planted shapes).
For every head: per-token top-k of the 50257 x 50257 OV (source -> output) and QK (query -> key) circuits,
the global top-N pairs (and bottom-N for OV), chunked, never materialised. Target: < 10 min and peak RSS
< 4 GB on 2 cores.

Prints wall time per phase, peak RSS, and the ratio of the measured time to an anchor measured in the same
run: the bare float32 chunk matmuls ([chunk, d_head] @ [d_head, 50257]) of one circuit, so "OV+QK vs
anchor" = time / (2 x heads x anchor) is the cost against the float32 products the circuits need (< 1 when
the screening matmul is cheaper than float32 here, e.g. bf16 on AVX-512 BF16). The screening dtype chosen
on this machine (circuitbook.tune) and its measured rates are printed. Every figure carries the load average.

    python benchmarks/bench_circuits.py [--config 21m|512x8|512x16] [--heads N] [--k 5] [--pairs 100]
                                        [--threads N] [--full]
--full times run_circuits instead (every task: bigram table, heads, neurons, detectors...) into a temporary
book and prints the seconds per task; OV + QK of all heads are then the 'head' task's time.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


CONFIGS = {"21m": (1024, 16, 4096), "512x8": (512, 8, 2048), "512x16": (512, 16, 2048)}  # d_model, heads, d_mlp


def random_21m(seed: int = 0, d: int = 1024, H: int = 16, m: int = 4096):
    """A random GPT-Neo with the TinyStories-1Layer-21M config (or d_model d, H heads, m neurons)."""
    from circuitbook.model import Model, parse_hf_config
    from circuitbook.model.weights import Weights

    cfg = parse_hf_config({
        "model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": d, "num_layers": 1, "num_heads": H,
        "attention_types": [[["global"], 1]], "max_position_embeddings": 2048, "window_size": 256,
        "intermediate_size": m, "activation_function": "gelu_new", "tie_word_embeddings": True,
        "bos_token_id": 50256, "eos_token_id": 50256})
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.02: torch.randn(*s, generator=g) * std  # noqa: E731
    L, e, V = 1, d // H, 50257
    W_E = r(V, d)
    w = Weights(cfg=cfg, W_E=W_E, W_pos=r(2048, d, std=0.01), W_Q=r(L, H, d, e), W_K=r(L, H, d, e),
                W_V=r(L, H, d, e), b_Q=torch.zeros(L, H, e), b_K=torch.zeros(L, H, e), b_V=torch.zeros(L, H, e),
                W_O=r(L, H, e, d), b_O=r(L, d), ln1_w=1 + r(L, d, std=0.1), ln1_b=r(L, d), ln2_w=1 + r(L, d, std=0.1),
                ln2_b=r(L, d), W_in=r(L, d, m), b_in=r(L, m), W_gate=None, W_out=r(L, m, d), b_out=r(L, d),
                lnf_w=1 + r(d, std=0.1), lnf_b=r(d), W_U=W_E.T, b_U=torch.zeros(V))
    return Model(w, None, f"random 1-layer GPT-Neo d_model {d}, {H} heads, {m} neurons")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="21m")
    ap.add_argument("--heads", type=int, default=0, help="heads timed (default: all of the config)")
    ap.add_argument("--k", type=int, default=5, help="tokens kept per row (default 5, as run_circuits)")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--full", action="store_true", help="also time the whole run_circuits into a temp book")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from machine import header, load

    from circuitbook.circuits import make_basis, ov_tops, qk_tops
    from circuitbook.circuits.ov import ov_factors
    from circuitbook.circuits.run import tuning, tuning_lines

    header()
    d, H, m = CONFIGS[args.config]
    heads = args.heads or H
    t = time.perf_counter()
    model = random_21m(d=d, H=H, m=m)
    print(f"{model.source}: build random weights {time.perf_counter() - t:.1f}s, peak RSS {peak_rss_gb():.2f} GB")
    for line in tuning_lines(tuning(model.cfg)):
        print(line, load())
    t = time.perf_counter()
    basis = make_basis(model)
    t_basis = time.perf_counter() - t
    print(f"basis (processed weights + tokens through the norm): {t_basis:.1f}s, peak RSS {peak_rss_gb():.2f} GB")

    # anchor: the bare float32 chunk matmuls of one head's circuit
    A, B = ov_factors(basis, 0, 0)
    V = A.shape[0]
    chunk = max(1, (1 << 24) // V)
    out = torch.empty(chunk, V)
    _ = torch.mm(A[:chunk], B, out=out)
    t = time.perf_counter()
    for s in range(0, V, chunk):
        _ = torch.mm(A[s:s + chunk], B, out=out[:min(chunk, V - s)])
    t_anchor = time.perf_counter() - t
    gf = 2 * V * V * A.shape[1] / t_anchor / 1e9
    print(f"anchor: bare float32 matmuls of one {V} x {V} circuit in chunks of {chunk} rows: {t_anchor:.2f}s "
          f"({gf:.1f} GFLOP/s) {load()}")

    if not args.full:  # with --full the 'head' task times OV + QK of every head inside run_circuits
        times = {}
        for name, fn, kw in (("OV", ov_tops, dict(bottom_pairs=True)), ("QK", qk_tops, {})):
            t = time.perf_counter()
            for h in range(heads):
                r = fn(basis, 0, h, k=args.k, n_pairs=args.pairs, **kw)
            times[name] = time.perf_counter() - t
            print(f"{name} tops, {heads} heads (per-row top-{args.k}, global top-{args.pairs} pairs): "
                  f"{times[name]:.1f}s = {times[name] / heads:.2f}s/head = {times[name] / heads / t_anchor:.2f}x "
                  f"anchor; e.g. top pair {r.top_pairs.as_list()[0]} {load()}")
        total = sum(times.values())
        print(f"OV+QK, {heads} heads: {total:.1f}s = {total / (2 * heads * t_anchor):.2f}x the bare float32 matmuls "
              f"they need (target <= 2x) {load()}")
        total += t_basis
        print(f"TOTAL OV+QK + basis, {heads} heads: {total:.1f}s ({total / 60:.2f} min; target < 10 min), "
              f"peak RSS {peak_rss_gb():.2f} GB (target < 4 GB)")
    if args.full:
        from circuitbook.book import Book
        from circuitbook.circuits import run_circuits

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            s = run_circuits(model, Book.open(f"{tmp}/b.db"), None, progress=True)
            wall = time.perf_counter() - t
            print(f"run_circuits (every task, no corpus): {wall:.1f}s ({wall / 60:.2f} min; target < 10 min), "
                  f"{s.computed} units, peak RSS {peak_rss_gb():.2f} GB {load()}")
            print("  seconds per task: " + ", ".join(f"{k} {v:.1f}" for k, v in s.task_seconds.items()))
            th = s.task_seconds.get("head", 0.0)
            print(f"  'head' task (OV + QK tops of all {H} heads, plus their eigen summaries, positional QK and "
                  f"skip-trigrams): {th:.1f}s = {th / (2 * H * t_anchor):.2f}x the bare float32 matmuls of "
                  f"{2 * H} circuits (target <= 2x) {load()}")


if __name__ == "__main__":
    main()
