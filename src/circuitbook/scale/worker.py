"""One shard job of a scaled-out run, wherever an executor puts it (a local process, a Ray task, a Slurm array
job). A scan shard (``spec["job"]`` "scan", the default): load the model, scan stories' batches j mod n into
the shard's own book, resumably. A score shard ("score"): see scale/score.py.

    python -m circuitbook.scale.worker SPEC.json      # what the local executor runs
    run_shard(spec)                                   # what Ray and submitit call

``spec`` (a JSON-able dict, see scale/scan.py ``shard_spec``): model, dtype, device, corpus, encoding,
settings (ScanSettings fields), shard [i, n], book, progress (a small JSON file the worker rewrites at most
every PROGRESS_S seconds: tokens done, tokens/s; the coordinator sums them), threads (torch threads).

Fault injection for tests: ``CIRCUITBOOK_SCALE_KILL=I@B`` makes the worker of shard I SIGKILL itself after
its B-th batch (a score shard: its B-th unit), once (a marker file ``<book>.killed`` / ``<out>.killed`` next to
the shard's output records that it happened).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

PROGRESS_S = 0.5
KILL_ENV = "CIRCUITBOOK_SCALE_KILL"


def kill_after(shard: int, book: str) -> int | None:
    """The count (batches, or units for a score shard) after which this shard's worker kills itself (fault
    injection), or None."""
    spec = os.environ.get(KILL_ENV, "")
    if "@" not in spec:
        return None
    i, b = spec.split("@", 1)
    if int(i) != shard or Path(book + ".killed").exists():
        return None
    return int(b)


def kill_self(output: str, count: int) -> None:
    """Record that the fault injection happened (``<output>.killed``), then SIGKILL this process."""
    Path(output + ".killed").write_text(f"killed after {count}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def write_progress(path: str | Path, info: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def limit_threads(n: int | None) -> None:
    """Give numba's pool n threads: it is sized from NUMBA_NUM_THREADS when numba is first imported, and a
    later numba.set_num_threads did not keep it from oversubscribing the cores (two shard processes on 2
    cores ran at a third of their speed), so set it before anything imports numba; where numba is already
    loaded (a reused Ray worker) set_num_threads is what is left."""
    if not n:
        return
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(int(n))


def run_shard(spec: dict) -> dict:
    """Run one shard job: ``spec["job"]`` "scan" (the default) or "score" (scale/score.py). Raises on failure."""
    limit_threads(spec.get("threads"))
    job = spec.get("job", "scan")
    if job == "score":
        from .score import run_score_shard

        return run_score_shard(spec)
    if job != "scan":
        raise ValueError(f"unknown shard job {job!r}")
    return run_scan_shard(spec)


def run_scan_shard(spec: dict) -> dict:
    """Scan one shard into its book; returns the ScanSummary as a dict. Raises on failure."""
    import torch

    from ..corpus import using_encoding
    from ..model import DTYPES, load_model
    from ..scan import ScanSettings, scan_corpus

    i, n = spec["shard"]
    kill_at = kill_after(i, spec["book"])
    model = load_model(spec["model"], dtype=DTYPES[spec["dtype"]], device=spec["device"])
    # the fingerprint's float sums depend on torch's thread count: take it with the coordinator's thread count
    # (an executor such as Ray may have started this process with one), so shard books carry the fingerprint
    # the coordinator checks against
    if spec.get("fingerprint_threads"):
        torch.set_num_threads(int(spec["fingerprint_threads"]))
    fp = model.fingerprint()
    model.fingerprint = lambda: fp
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    settings = ScanSettings(**{**spec["settings"], "shard": (i, n)})
    state = {"batches": 0, "written": 0.0}

    def on_batch(prog: dict, new_tokens: int, seconds: float) -> None:
        state["batches"] += 1
        now = time.time()
        if spec.get("progress") and now - state["written"] >= PROGRESS_S:
            write_progress(spec["progress"], {"tokens": prog["tokens"], "new_tokens": new_tokens,
                                              "seconds": seconds, "done": False})
            state["written"] = now
        if kill_at is not None and state["batches"] >= kill_at:
            kill_self(spec["book"], state["batches"])

    from .scan import _sources

    sources = _sources(model, Path(spec["dictionary_book"]), spec.get("features")) if spec.get("features") else ()
    with using_encoding(spec.get("encoding")):
        summary = scan_corpus(model, spec["corpus"], spec["book"], settings, keep_state=True, progress=False,
                              overwrite=bool(spec.get("overwrite")), on_batch=on_batch, sources=sources)
    out = {"tokens": summary.tokens, "new_tokens": summary.new_tokens, "seconds": summary.seconds,
           "tokens_per_s": summary.tokens_per_s, "resumed": summary.resumed, "done": True}
    if spec.get("progress"):
        write_progress(spec["progress"], out)
    from ..book.core import close_books

    close_books(Path(spec["book"]))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    run_shard(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
