"""Scan speed, memory and book size, with anchors measured in the same run.

    python benchmarks/bench_scan.py [--tokens21 60000] [--tokens-dev 60000] [--tl-batches 6] [--skip-full]

For the exact TinyStories-1Layer-21M config (random weights: vocab 50257, d_model 1024, 16 heads, 4096
neurons) and for ts-1l-dev:
  * bare forward with the scan's taps (the anchor) vs the scan loop: bookkeeping overhead (target <= 15%),
    over all batches, over the second half (after the top-k / reservoirs have warmed up) and for the
    median batch. Per batch the anchor forward and the bookkeeping (batch context included) are timed
    back to back on the same batch, so load drift on a shared machine hits both alike. Both are warmed
    up first (torch's kernels and the scan's compiled ones: scan_corpus loads those before its timer);
  * TransformerLens run_with_cache(names_filter = the MLP hook_post and the attention pattern, nothing
    else cached) + a naive per-neuron top-k with context windows, in a Python loop over neurons, on the
    first --tl-batches batches, each right after the scan's turn on the same batch, against the scan on
    those batches (cold start included) (target: scan >= 8x faster; the anchor computes the unembedding
    as plain run_with_cache does; the scan also records bands, histograms, token means and head
    statistics, the anchor only the top-k);
  * scan_corpus end to end in a subprocess: tokens/s, finalize time, book size, peak RSS (4096 x 32);
  * all 1,841 shared stories with ts-1l-dev: the bookkeeping overhead batch by batch as above, and
    scan_corpus end to end (wall time) against the bare forward over the same batches, tokenizing
    included, in separate processes run before and after it.
The machine may be shared: the load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
STORIES = ASSETS / "tinystories-text" / "TinyStories-valid.prefix-1841stories.txt"
DEV = ASSETS / "ts-1l-dev"


def model_for(name: str):
    from circuitbook.model import Tokenizer, from_hf_model, load_model
    from circuitbook.model.memory import keep_freed_memory

    keep_freed_memory()  # anchors and scan alike: scan_corpus and the CLI run with it (model/memory.py)

    if name == "dev":
        return load_model(DEV)
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=1024, num_layers=1, attention_types=[[["global"], 1]],
                       num_heads=16, intermediate_size=4096, max_position_embeddings=2048, window_size=256)
    return from_hf_model(GPTNeoForCausalLM(cfg).eval(), Tokenizer.from_dir(DEV, bos_id=50256), source="random-1L-21M")


def tensors(group):
    from circuitbook.corpus import pad

    return pad([ids for _, _, ids in group])


def tl_anchor(model, s):
    """TransformerLens run_with_cache (the MLP hook_post and attention patterns cached, nothing else) +
    a naive per-neuron top-k with context windows: returns step(group) -> tokens counted."""
    from circuitbook.model import to_hooked_transformer

    c = model.cfg
    ht = to_hooked_transformer(model.weights)
    k, before, after = s.k, s.before, s.after
    tops = [[] for _ in range(c.d_mlp)]  # per neuron: list of (value, window tokens, window acts)

    def step(g) -> int:
        tok, mask = tensors(g)
        with torch.no_grad():
            _, cache = ht.run_with_cache(tok, names_filter=lambda n: n.endswith(("hook_post", "hook_pattern")))
        acts = cache["blocks.0.mlp.hook_post"]
        acts = acts.masked_fill(~mask[..., None], float("-inf"))
        acts[:, 0] = float("-inf")
        flat = acts.reshape(-1, c.d_mlp)
        T = tok.shape[1]
        for n in range(c.d_mlp):  # the naive way: one neuron at a time, windows cut for every candidate
            v, i = flat[:, n].topk(k)
            cand = list(tops[n])
            for j in range(k):
                b, p = int(i[j]) // T, int(i[j]) % T
                lo = max(0, p - before)
                cand.append((float(v[j]), tok[b, lo:p + after + 1].tolist(), acts[b, lo:p + after + 1, n].tolist()))
            cand.sort(key=lambda x: -x[0])
            tops[n] = cand[:k]
        return int(mask[:, 1:].sum())
    return step


def forward_flops(cfg, lengths) -> float:
    """Matmul FLOPs of the forward to the last MLP's activations for sequences of these real lengths:
    per token and layer Q, K, V, O (8 d^2) and the MLP in (2 d m, gated 4 d m) and out (2 d m), plus
    attention at the real length (QK and pattern @ V: 4 d per visible key, causal: L(L+1)/2 pairs); the last
    layer's MLP out and the unembedding are not computed by a scan to the last tap, so not counted."""
    d, m, L = cfg.d_model, cfg.d_mlp, cfg.n_layers
    n = float(lengths.sum())
    pairs = float((lengths * (lengths + 1) / 2).sum())
    mlp_in = (4 if cfg.gated_mlp else 2) * d * m
    return L * (8 * d * d * n + mlp_in * n + 4 * d * pairs) + (L - 1) * 2 * d * m * n


def part_loop(name: str, max_tokens: int, batch_size: int, tl_batches: int) -> dict:
    """Per batch: bare forward (taps) timed apart from the scan's bookkeeping; on the first tl_batches
    batches, TransformerLens + naive top-k on the same batch right after (load drift hits both alike)."""
    from circuitbook.corpus import read_stories
    from circuitbook.scan import kernels
    from circuitbook.scan.context import BatchContext
    from circuitbook.scan.run import ScanSettings, ScanState, shard_batches

    model = model_for(name)
    s = ScanSettings(max_tokens=max_tokens, batch_size=batch_size, max_len=512)
    batches = [g for _, g in shard_batches(read_stories(STORIES), model.tokenizer, s)]
    cfg = model.cfg
    taps = [f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in ("attn.hook_pattern", "mlp.hook_post")]
    state = ScanState.fresh(cfg, s, "cpu")
    tl_step = tl_anchor(model, s) if tl_batches else None
    fwd, upd, ntok, tl_s, tl_tok = [], [], [], 0.0, 0
    flops = 0.0
    model.run(tensors(batches[0])[0][:1, :16], taps)  # warm up kernels (torch's, and the scan's compiled ones)
    kernels.warm()
    n_tl = min(tl_batches, len(batches))
    for bi, g in enumerate(batches):
        tok, mask = tensors(g)
        t0 = time.perf_counter()
        out = model.run(tok, taps, lengths=mask.sum(1))  # the anchor: the scan's forward, same batch and taps, right before
        t1 = time.perf_counter()
        ctx = BatchContext.build(tok, mask, torch.tensor([x[0] for x in g]), torch.tensor([x[1] for x in g]),
                                 s.max_len, s.before, s.after)
        for l in reversed(range(cfg.n_layers)):  # newest first: the last MLP output may still be in cache
            state.neurons[l].update(out[f"blocks.{l}.mlp.hook_post"], ctx)
            state.heads[l].update(out[f"blocks.{l}.attn.hook_pattern"], ctx)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        upd.append(t2 - t1)
        flops += forward_flops(cfg, mask.sum(1))
        ntok.append(len(ctx.rows))
        del out
        if bi < n_tl:
            t3 = time.perf_counter()
            tl_tok += tl_step(g)
            tl_s += time.perf_counter() - t3
    from circuitbook.tune import matmul_rates

    bound = matmul_rates(2048, cfg.d_model, cfg.d_mlp)["fp32"] * 1e9  # FLOP/s of a big float32 matmul, here
    h = len(batches) // 2
    # the same first batches for both (the scan's include its cold start: empty top-k, first levels)
    scan_first = sum(ntok[:n_tl]) / (sum(fwd[:n_tl]) + sum(upd[:n_tl])) if n_tl else 0.0
    return {"model": name, "batches": len(batches), "tokens": sum(ntok), "batch_size": batch_size,
            "fwd_s": sum(fwd), "update_s": sum(upd), "overhead_all": sum(upd) / sum(fwd),
            "overhead_2nd_half": sum(upd[h:]) / sum(fwd[h:]),
            "overhead_median_batch": sorted(u / f for u, f in zip(upd, fwd))[len(upd) // 2],
            "bare_tok_s": sum(ntok) / sum(fwd), "bound_flop_s": bound,
            "bound_fraction": flops / sum(fwd) / bound, "flops_per_token": flops / sum(ntok), "scan_tok_s": sum(ntok) / (sum(fwd) + sum(upd)),
            "scan_tok_s_2nd_half": sum(ntok[h:]) / (sum(fwd[h:]) + sum(upd[h:])),
            "tl_batches": n_tl, "tl_tok_s": tl_tok / tl_s if n_tl else 0.0, "scan_tok_s_tl_batches": scan_first,
            "speedup_vs_tl": scan_first / (tl_tok / tl_s) if n_tl else 0.0}


def part_scan(name: str, max_tokens: int | None, batch_size: int) -> dict:
    """scan_corpus end to end (this process's peak RSS is reported by the parent)."""
    from circuitbook.scan import scan_corpus

    model = model_for(name)
    out = Path(tempfile.mkdtemp()) / "book.db"
    t0 = time.perf_counter()
    summ = scan_corpus(model, STORIES, out, max_tokens=max_tokens, batch_size=batch_size, max_len=512, progress=False)
    wall = time.perf_counter() - t0
    res = {"model": name, "tokens": summ.tokens, "wall_s": wall, "loop_s": summ.seconds,
           "finalize_s": wall - summ.seconds, "scan_tok_s": summ.tokens_per_s, "book_mib": summ.book_bytes / 2**20,
           "n_neurons": summ.n_neurons,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    os.unlink(out)
    return res


def part_bare(name: str, max_tokens: int | None, batch_size: int) -> dict:
    """The anchor for a whole scan: the same batches as scan_corpus (tokenized and padded the same way),
    through the bare forward with the scan's taps, nothing recorded."""
    from circuitbook.corpus import read_stories
    from circuitbook.scan.run import ScanSettings, shard_batches

    model = model_for(name)
    cfg = model.cfg
    taps = [f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in ("attn.hook_pattern", "mlp.hook_post")]
    s = ScanSettings(max_tokens=max_tokens, batch_size=batch_size, max_len=512)
    model.run(torch.zeros(1, 16, dtype=torch.long), taps)
    t0 = time.perf_counter()
    n = 0
    for _, group in shard_batches(read_stories(STORIES), model.tokenizer, s):
        tok, mask = tensors(group)
        model.run(tok, taps, lengths=mask.sum(1))
        n += int(mask[:, 1:].sum())
    wall = time.perf_counter() - t0
    return {"model": name, "tokens": n, "wall_s": wall, "tok_s": n / wall}


def child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["loop", "scan", "bare"])
    ap.add_argument("--model", default="dev")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tokens21", type=int, default=60000)
    ap.add_argument("--tokens-dev", type=int, default=60000)
    ap.add_argument("--tl-batches", type=int, default=6, help="batches the TransformerLens anchor runs (and the "
                    "scan is compared on)")
    ap.add_argument("--skip-full", action="store_true")
    a = ap.parse_args()
    if a.part == "loop":
        print(json.dumps(part_loop(a.model, a.tokens, a.batch_size, a.tl_batches)))
        return
    if a.part == "scan":
        print(json.dumps(part_scan(a.model, a.tokens, a.batch_size)))
        return
    if a.part == "bare":
        print(json.dumps(part_bare(a.model, a.tokens, a.batch_size)))
        return
    from machine import header

    header()
    rows = []
    for name, n in (("21M", a.tokens21), ("dev", a.tokens_dev)):
        r = child(["--part", "loop", "--model", name, "--tokens", str(n), "--tl-batches", str(a.tl_batches)])
        print(f"[{name}] {r['tokens']:,} tokens in {r['batches']} batches of {r['batch_size']} stories: "
              f"bare forward {r['bare_tok_s']:,.0f} tok/s = {r['bound_fraction']:.2f} of this machine's float32 "
              f"matmul bound for its FLOPs ({r['flops_per_token'] / 1e6:.1f} MFLOP/token at "
              f"{r['bound_flop_s'] / 1e9:.1f} GFLOP/s, attention at the real lengths), scan {r['scan_tok_s']:,.0f} tok/s -> bookkeeping overhead "
              f"{100 * r['overhead_all']:.1f}% (2nd half {100 * r['overhead_2nd_half']:.1f}%, median batch "
              f"{100 * r['overhead_median_batch']:.1f}%; target <= 15%); "
              f"on the first {r['tl_batches']} batches TransformerLens run_with_cache + naive per-neuron top-k "
              f"{r['tl_tok_s']:,.0f} tok/s vs scan {r['scan_tok_s_tl_batches']:,.0f} tok/s -> scan is "
              f"{r['speedup_vs_tl']:.1f}x faster (target >= 8x)   [load {os.getloadavg()[0]:.1f}]", flush=True)
        rows.append(r)
    r = child(["--part", "scan", "--model", "21M", "--tokens", str(a.tokens21)])
    print(f"[21M] scan_corpus {r['tokens']:,} tokens: {r['wall_s']:.1f}s wall ({r['scan_tok_s']:,.0f} tok/s in the loop, "
          f"{r['finalize_s']:.1f}s writing results); book {r['book_mib']:.1f} MiB for {r['n_neurons']} neurons x 32 "
          f"examples (+ quantile samples); peak RSS of the scan process (model included) {r['peak_rss_mib']:,.0f} MiB   [load {os.getloadavg()[0]:.1f}]",
          flush=True)
    if not a.skip_full:
        # the whole corpus: bookkeeping vs forward back to back per batch (robust to load drift), then
        # scan_corpus end to end against the bare forward over the same batches in separate processes
        # (before and after: a shared machine's drift shows as the gap between the two)
        w = child(["--part", "loop", "--model", "dev", "--tl-batches", "0"])
        print(f"[dev] all 1,841 stories, {w['tokens']:,} tokens in {w['batches']} batches: bare forward "
              f"{w['bare_tok_s']:,.0f} tok/s, scan {w['scan_tok_s']:,.0f} tok/s -> bookkeeping overhead "
              f"{100 * w['overhead_all']:.1f}% (2nd half {100 * w['overhead_2nd_half']:.1f}%, median batch "
              f"{100 * w['overhead_median_batch']:.1f}%)   [load {os.getloadavg()[0]:.1f}]", flush=True)
        b1 = child(["--part", "bare", "--model", "dev"])
        r = child(["--part", "scan", "--model", "dev"])
        b2 = child(["--part", "bare", "--model", "dev"])
        bare = (b1["wall_s"] + b2["wall_s"]) / 2
        print(f"[dev] all 1,841 stories ({r['tokens']:,} tokens): scan_corpus {r['wall_s']:.1f}s wall "
              f"({r['loop_s']:.1f}s scanning = {r['scan_tok_s']:,.0f} tok/s, {r['finalize_s']:.1f}s writing results); "
              f"book {r['book_mib']:.1f} MiB, peak RSS {r['peak_rss_mib']:,.0f} MiB; the bare forward over the same "
              f"batches (tokenizing included) {b1['wall_s']:.1f}s before, {b2['wall_s']:.1f}s after -> end-to-end "
              f"overhead {100 * (r['loop_s'] / bare - 1):.1f}%   [load {os.getloadavg()[0]:.1f}]", flush=True)


if __name__ == "__main__":
    main()
