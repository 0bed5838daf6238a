"""Merge shard books (``scan --shard i/n``) into one book identical to a single-run scan.

Every shard must be finished, hold its state (shards keep it by default), describe the same model,
corpus and settings, and together the shards must be exactly 0..n-1 of n. All statistics are exact and
order-independent, so the merged book equals the book of one uninterrupted scan of the whole corpus
(when no --max-tokens limit was used: that limit applies per shard).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..book import Book
from .run import ScanError, ScanSettings, load_state, save_state, write_results


def merge_books(inputs: list[str | Path], out: str | Path, overwrite: bool = False,
                keep_state: bool = False) -> dict:
    """Merge shard books into ``out`` (created; refused if it already holds a scan unless ``overwrite``).
    Returns the merged progress (tokens, sequences)."""
    if not inputs:
        raise ScanError("merge needs at least one shard book")
    shards, states, ident0, first = {}, None, None, None
    read = []  # each shard's scan_stories: prefixes of the corpus's story hashes, the longest is the whole read
    for p in inputs:
        if not Path(p).exists():
            raise ScanError(f"no book at {p}")
        b = Book.open(p, create=False, readonly=True)
        got = load_state(b)
        if got is None:
            raise ScanError(f"{p} holds no scan")
        ident, prog, state, complete = got
        if not complete:
            raise ScanError(f"{p}: its scan is not finished (re-run the same scan command to finish it)")
        if state is None:
            raise ScanError(f"{p}: the scan's state was dropped (scan with --shard or --keep-state to merge)")
        base = {k: v for k, v in ident.items() if k != "shard"}
        if ident0 is None:
            ident0, first = base, b
        elif base != ident0:
            diff = sorted(k for k in set(base) | set(ident0) if base.get(k) != ident0.get(k))
            raise ScanError(f"{p} was scanned with different {', '.join(diff)} than {inputs[0]}")
        i, n = ident["shard"]
        if (i, n) in shards:
            raise ScanError(f"{p} and {shards[(i, n)]} are both shard {i}/{n}")
        shards[(i, n)] = p
        read.append(b.get_meta("scan_stories") or [])
        if states is None:
            states = state
        else:
            states.merge(state)
        b.close()
    ns = {n for _, n in shards}
    n = ns.pop()
    if ns or len(shards) != n:
        missing = sorted(set(range(n)) - {i for i, _ in shards})
        raise ScanError(f"shards do not make a whole: have {sorted(shards)}, missing {missing}")

    out = Path(out)
    ob = Book.open(out)
    if load_state(ob) is not None and not overwrite:
        raise ScanError(f"{out} already holds a scan; use another book or --overwrite")
    settings = ScanSettings(**{k: (tuple(v) if k == "shard" else v) for k, v in ident0.items()
                               if k in {f.name for f in dataclasses.fields(ScanSettings)}})
    settings.shard = (0, 1)
    identity = {**ident0, "shard": [0, 1] if ident0.get("max_tokens") is None else [0, -n]}
    first = Book.open(inputs[0], create=False, readonly=True)
    progress = {k: states.progress[k] for k in ("sequences", "tokens")}
    progress["batch"], progress["last"] = None, None
    progress["merged_from"] = [str(p) for p in inputs]
    with ob.transaction() as c:
        for key in ("model_fingerprint", "model_source", "model_config", "scan_corpus"):
            v = first.get_meta(key)
            if v is not None:
                ob.set_meta(key, v, c)
        ob.copy_vocab(first, c)
        stories = max(read, key=len)
        if stories:  # what held-out checks read (explain/score.py): the stories the whole scan read
            ob.set_meta("scan_stories", stories, c)
        write_results(c, states, settings)
        save_state(ob, identity, states if keep_state else None, progress, True, c)
    first.close()
    run = ob.start_run("merge", {"inputs": [str(p) for p in inputs], "at": time.time()})
    ob.finish_run(run, progress)
    if not keep_state:
        ob.vacuum()
    ob.checkpoint_wal()
    return progress

