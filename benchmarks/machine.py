"""What every benchmark prints first: the CPU model and its flags (AVX2 / AVX-512 / AVX-512 BF16 / AMX),
torch's threads, and the load average; ``load()`` is the short tag printed beside each figure (the machine
may be shared, so a figure means little without it).

    from machine import header, load   # benchmarks/ is on sys.path when a script there runs
    header()
    print(f"forward: {tok_s:.0f} tok/s {load()}")
"""

from __future__ import annotations

import os


def load() -> str:
    """'[load 3.2/2 cores]': the 1-minute load average against the core count."""
    return f"[load {os.getloadavg()[0]:.1f}/{os.cpu_count()} cores]"


def header() -> None:
    """Print the CPU line (circuitbook.tune.cpu_line) and the load average."""
    from circuitbook.tune import cpu_line

    print(cpu_line())
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
