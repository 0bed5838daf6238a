"""Kernel choices made by measurement on this machine, cached per machine (like numba's cache).

Which matmul dtype screens a token x token circuit fastest depends on the CPU: bfloat16 is several times
faster than float32 where the CPU has AVX-512 BF16 / AMX, and about ten times slower where it is emulated
(AVX2 only). :func:`screen_choice` times both candidates on the real shape the first time it is asked
(a few hundred milliseconds), keeps the faster, and caches the choice with the measured rates in
``<cache dir>/tune-<machine>.json``, keyed by the CPU model, its flags, the torch version and the thread
count, so a new CPU, torch or thread setting measures again. Nothing is written in the repository.

* ``CIRCUITBOOK_CACHE_DIR``: where the cache lives (default ``$XDG_CACHE_HOME/circuitbook`` or
  ``~/.cache/circuitbook``).
* ``CIRCUITBOOK_SCREEN_DTYPE=fp32|bf16``: skip the measurement and use this dtype.

:func:`cpu_info` (model name and the SIMD flags that matter) is what the benchmarks print at their top.
:func:`matmul_rates` measures float32 / bfloat16 GFLOP/s on one shape; :func:`bf16_warning` (cached the same
way) is what the CLI prints when ``--dtype bf16`` is asked for on a CPU where bfloat16 is the slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from .errors import CircuitbookError

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ENV_DTYPE = "CIRCUITBOOK_SCREEN_DTYPE"
ENV_DIR = "CIRCUITBOOK_CACHE_DIR"


class TuneError(CircuitbookError, ValueError):
    """A tuning override names something that does not exist (e.g. an unknown dtype)."""


def cpu_info() -> dict:
    """{'model': CPU model name, 'flags': the SIMD flags of :data:`FLAGS` this CPU has, 'cores': count,
    'torch': version, 'capability': torch's CPU capability} (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count(),
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def cpu_line() -> str:
    """One line: the CPU model, cores and which of AVX2 / AVX-512 / AVX-512 BF16 / AMX it has."""
    c = cpu_info()
    return (f"CPU: {c['model']}, {c['cores']} cores, flags {' '.join(c['flags']) or '-'} "
            f"(torch {c['torch']}, {c['capability']}, {torch.get_num_threads()} threads)")


def cache_path() -> Path:
    """The machine's cache file (see the module docstring)."""
    base = os.environ.get(ENV_DIR) or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                  os.path.join(os.path.expanduser("~"), ".cache"), "circuitbook")
    c = cpu_info()
    key = json.dumps([c["model"], c["flags"], c["torch"], torch.get_num_threads()])
    return Path(base) / f"tune-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _load() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(entries: dict) -> None:
    p = cache_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        tmp.replace(p)
    except OSError:  # a read-only home: measure again next time
        pass


def _time(fn, reps: int = 3) -> float:
    """Best of ``reps`` timings (seconds) after one warm-up call: the least disturbed by other load."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_rates(rows: int, inner: int, cols: int, reps: int = 3) -> dict[str, float]:
    """Measured GFLOP/s of ``[rows, inner] @ [inner, cols]`` in float32 and bfloat16 on this CPU."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(rows, inner, generator=g), torch.randn(inner, cols, generator=g)
    out = {}
    for name, dt in DTYPES.items():
        a, b = A.to(dt), B.to(dt)
        o = torch.empty(rows, cols, dtype=dt)
        out[name] = 2 * rows * inner * cols / _time(lambda: torch.mm(a, b, out=o), reps) / 1e9
    return out


def _choice(key: str, rows: int, inner: int, cols: int) -> dict:
    """The faster dtype for ``[rows, inner] @ [inner, cols]``, cached under ``key``."""
    entries = _load()
    if key in entries:
        return dict(entries[key], source="cache")
    rates = matmul_rates(max(1, min(rows, 512)), inner, min(cols, 1 << 16))
    choice = {"dtype": max(rates, key=rates.get), "gflops": {k: round(v, 2) for k, v in rates.items()}}
    entries[key] = choice
    _save(entries)
    return dict(choice, source="measured")


def screen_choice(inner: int, cols: int, rows: int) -> dict:
    """The screening dtype for ``[rows, inner] @ [inner, cols]`` chunks: {'dtype': 'fp32'|'bf16',
    'gflops': {dtype: measured GFLOP/s}, 'source': 'measured'|'cache'|'env'|'small'}.

    Measured once per machine and shape class (inner, cols rounded up to powers of two), then cached."""
    env = os.environ.get(ENV_DTYPE)
    if env:
        if env not in DTYPES:
            raise TuneError(f"{ENV_DTYPE}={env!r}: expected one of {', '.join(DTYPES)}")
        return {"dtype": env, "gflops": {}, "source": "env"}
    if cols * inner < 1 << 16:  # tiny: nothing to gain, do not measure
        return {"dtype": "fp32", "gflops": {}, "source": "small"}
    return _choice(f"screen:{_pow2(inner)}x{_pow2(cols)}", rows, inner, cols)


def forward_choice(d_model: int, d_mlp: int) -> dict:
    """Which dtype runs a forward's MLP matmul ``[512, d_model] @ [d_model, d_mlp]`` faster here (cached);
    what the CLI checks before running a model in bfloat16 on a CPU (see :func:`bf16_warning`)."""
    return _choice(f"forward:{_pow2(d_model)}x{_pow2(d_mlp)}", 512, d_model, d_mlp)


def bf16_warning(d_model: int, d_mlp: int) -> str | None:
    """A warning when bfloat16 matmuls are slower than float32 on this CPU (bf16 emulated), else None."""
    c = forward_choice(d_model, d_mlp)
    g = c["gflops"]
    if c["dtype"] == "bf16" or not g:
        return None
    return (f"warning: bfloat16 is slower than float32 on this CPU ({g.get('bf16', 0):.1f} vs "
            f"{g.get('fp32', 0):.1f} GFLOP/s measured; no AVX-512 BF16 / AMX): --dtype fp32 will be faster")


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def screen_dtype(inner: int, cols: int, rows: int) -> torch.dtype:
    """The torch dtype :func:`screen_choice` picks."""
    return DTYPES[screen_choice(inner, cols, rows)["dtype"]]


def choices() -> dict:
    """Every choice cached for this machine (what ``circuitbook circuits -v`` prints and the run stores)."""
    return {"cpu": cpu_info(), "cache": str(cache_path()), "choices": _load()}
