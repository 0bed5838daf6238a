"""circuitbook demo: run the main job on the embedded handcrafted model (no download, no ../shared)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the embedded handcrafted model")
    p.add_argument("--out", default="circuitbook-demo", help="output directory (default ./circuitbook-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for the demo model and corpus")
    p.add_argument("--superposition", action="store_true",
                   help="instead: the superposition check (8 rules over 16 neurons; a small transcoder recovers them)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.superposition:
        from ..demo.superposition import run_superposition_check

        r = run_superposition_check(seed=args.seed)
        return 0 if min(r["recovery"].values()) >= 0.9 else 1
    from pathlib import Path

    from ..demo.run import run_demo
    from ..errors import CircuitbookError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CircuitbookError(f"--out {out} is a file, not a directory")
    if not out.parent.is_dir():
        raise CircuitbookError(f"--out {out}: directory {out.parent} does not exist")

    run_demo(args.out, seed=args.seed)
    return 0
