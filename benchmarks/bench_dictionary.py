"""Dictionary training speed on the TinyStories-1Layer-21M shapes (d_in 1024, 16,384 features, TopK k=32).

Prints, from one run on this machine:
  * the float32 matmul bound: seconds of one [batch, d_in] x [d_in, d_sae] matmul (the dense encoder every
    TopK trainer needs per batch), measured here, and the tokens/s that bound allows;
  * circuitbook's trainer (``dictionary.trainer.train_step`` + Adam + decoder upkeep): tokens/s, as a fraction
    of the bound, and its final FVU;
  * SAELens 6's trainer on the same activations, width, k, batch and steps (``TopKTrainingSAE
    .training_forward_pass`` + Adam, its own AuxK; the SAE kind, since SAELens cannot train transcoders):
    tokens/s and final FVU, side by side.
Activations are synthetic but structured (sparse codes over a random dictionary plus noise), the same tensors
for both trainers, so no model download is needed. Usage: python benchmarks/bench_dictionary.py [--steps N]
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import header, load  # benchmarks/ is on sys.path when a script there runs


def synthetic(n: int, d_in: int, n_true: int = 4096, k_true: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d_in, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.randint(n_true, (n, k_true), generator=g)
    val = torch.rand(n, k_true, generator=g) * 3
    x = torch.nn.functional.embedding_bag(idx, D, per_sample_weights=val, mode="sum")
    return x + 0.05 * torch.randn(n, d_in, generator=g)


def matmul_bound(batch: int, d_in: int, d_sae: int, reps: int = 3) -> float:
    a, b = torch.randn(batch, d_in), torch.randn(d_in, d_sae)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t) / reps


def fvu(y, y_hat) -> float:
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def run_circuitbook(x, d_sae, k, batch, steps):
    from circuitbook.dictionary import Dictionary, DictionaryConfig, TrainConfig
    from circuitbook.dictionary.trainer import train_step

    d = Dictionary(DictionaryConfig("sae", 0, x.shape[1], d_sae, "topk", k=k))
    d.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        d.b_dec.copy_(x.mean(0))
    opt = torch.optim.Adam(d.parameters(), lr=2e-4)
    tc = TrainConfig(tokens=batch * steps, batch_size=batch)
    since = torch.zeros(d_sae, dtype=torch.long)
    t = time.perf_counter()
    for s in range(steps):
        xb = x[s * batch:(s + 1) * batch]
        loss, logs, fired, _ = train_step(d, xb, xb, tc, since > tc.dead_tokens, torch.float32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        d.remove_parallel_grad()
        opt.step()
        d.normalize_decoder()
        since += len(xb)
        since[fired] = 0
    sec = time.perf_counter() - t
    with torch.no_grad():
        return sec, fvu(x[-batch:], d(x[-batch:]))


def run_saelens(x, d_sae, k, batch, steps):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    t = time.perf_counter()
    for s in range(steps):
        xb = x[s * batch:(s + 1) * batch]
        out = sae.training_forward_pass(TrainStepInput(sae_in=xb, coefficients={}, dead_neuron_mask=dead,
                                                       n_training_steps=s, is_logging_step=False))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    sec = time.perf_counter() - t
    with torch.no_grad():
        return sec, fvu(x[-batch:], sae(x[-batch:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=1024)
    p.add_argument("--features", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--full", action="store_true", help="the 1L-21M shape: d_in 1024, 16,384 features, k 32, batch 4096")
    a = p.parse_args()
    if a.full:
        a.d_in, a.features, a.k, a.batch = 1024, 16384, 32, 4096
    header()
    x = synthetic(a.batch * a.steps, a.d_in)
    t_mm = matmul_bound(a.batch, a.d_in, a.features)
    bound = a.batch / t_mm
    print(f"threads {torch.get_num_threads()}; fp32 matmul [{a.batch}x{a.d_in}]x[{a.d_in}x{a.features}]: {t_mm * 1e3:.1f} ms "
          f"= {2 * a.batch * a.d_in * a.features / t_mm / 1e9:.1f} GFLOP/s -> bound {bound:,.0f} tokens/s (one dense encoder "
          f"matmul per token) {load()}")
    tokens = a.batch * a.steps
    s_cb, f_cb = run_circuitbook(x, a.features, a.k, a.batch, a.steps)
    print(f"circuitbook  {a.steps} steps: {s_cb:.1f} s, {tokens / s_cb:,.0f} tokens/s = {tokens / s_cb / bound:.2f} of the "
          f"bound; final-batch FVU {f_cb:.4f} {load()}")
    try:
        s_sl, f_sl = run_saelens(x, a.features, a.k, a.batch, a.steps)
        print(f"SAELens      {a.steps} steps: {s_sl:.1f} s, {tokens / s_sl:,.0f} tokens/s = {tokens / s_sl / bound:.2f} of the "
              f"bound; final-batch FVU {f_sl:.4f}   (circuitbook {s_sl / s_cb:.2f}x faster) {load()}")
    except ImportError:
        print("SAELens not installed (pip install sae-lens): no side-by-side")


if __name__ == "__main__":
    main()
