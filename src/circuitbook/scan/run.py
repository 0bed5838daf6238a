"""The streaming driver: corpus -> model (taps only) -> accumulators -> book, resumable and shardable.

    summary = scan_corpus(model, "stories.txt", book)            # or a list of story strings

Taps only ``blocks.{l}.mlp.hook_post`` and ``blocks.{l}.attn.hook_pattern``: the forward stops after the
last layer's MLP activation, so W_out of the last layer and the unembedding are never computed.

Resume: every ``checkpoint_every`` batches and ``checkpoint_seconds`` (spaced out so that writing it costs
at most 2% of the scan's time) the whole state (accumulators + how far we got, keyed by the last (story, window) done) is written
to ``scan_state`` in one transaction. A run killed at any point
(even SIGKILL) and started again with the same arguments continues from the last checkpoint; every
statistic is exact and order-independent (see neurons.py, topk.py, reservoir.py), so the book ends
identical to an uninterrupted run. Ctrl-C writes a checkpoint before stopping.

Shards: ``shard=(i, n)`` scans the stories whose index is i mod n; keys keep global story indices, so
``merge_books`` over the n shard books gives the single-run book.

Other units: ``sources`` (:class:`UnitSource`, e.g. a stored dictionary's features, built by
``circuitbook.dictionary.scan``) are recorded in the same pass with the neurons' statistics (one
NeuronAccumulator each: top and band examples, histogram, mean/std, token means) into ``scan_unit_stats``,
``scan_unit_token_means`` and ``scan_examples`` under their kind. They are part of the scan's identity
(resume and merge need the same sources); a book whose finished scan differs from the asked one only in
its sources is scanned again from the start, no ``--overwrite`` needed (the neurons' tables come out the same).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..book import Book, BookError
from ..book import scan as store
from ..corpus import CorpusError, corpus_hash, pad, read_stories, story_hashes
from ..errors import CircuitbookError
from ..model.memory import keep_freed_memory
from .context import BatchContext
from .heads import STATS, HeadAccumulator
from .neurons import NeuronAccumulator, use_kernels
from .mergeable_topk import EMPTY_KEY, split_key

SCAN_VERSION = 1
CHECKPOINT_RATIO = 50  # scan at least this many times as long as the last checkpoint took before the next


class ScanError(CircuitbookError, RuntimeError):
    """The scan cannot run as asked (a book for another scan, an empty corpus, bad settings)."""


@dataclasses.dataclass
class ScanSettings:
    """What a scan records. Everything except the checkpoint_* fields is part of the scan's identity: resuming
    or merging needs the same values (batch_size too: it decides which sequences share a forward, and a
    forward's last bits can depend on that)."""

    k: int = 32  # top examples per unit
    r: int = 4  # sampled examples per activation band
    before: int = 32  # context tokens before the focus
    after: int = 8  # and after
    max_len: int | None = None  # tokens per sequence, BOS included; None: min(512, model context)
    max_tokens: int | None = None  # stop after this many story tokens (whole sequences)
    shard: tuple[int, int] = (0, 1)
    token_k: int = 32  # tokens kept per neuron for token_means
    token_min_count: int = 3
    pair_k: int = 32  # (query, key) token pairs kept per head
    pair_min: float = 0.1  # attention weights below this are not counted in pair mass
    batch_size: int = 8
    checkpoint_every: int = 25  # batches
    checkpoint_seconds: float = 60.0  # and at least this long since the last one (a kill redoes at most that)

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("checkpoint_every")
        d.pop("checkpoint_seconds")
        d["shard"] = list(self.shard)
        return d

    def check(self, n_ctx: int) -> None:
        if self.k < 1 or self.r < 1:
            raise ScanError(f"k and r must be >= 1 (got k={self.k}, r={self.r})")
        if self.before < 0 or self.after < 0:
            raise ScanError("context sizes must be >= 0")
        if not 2 <= self.max_len <= n_ctx:
            raise ScanError(f"max_len {self.max_len} must be between 2 and the model's context {n_ctx}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ScanError(f"shard {i}/{n}: need 0 <= i < n")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise ScanError("batch_size and checkpoint_every must be >= 1")
        if self.checkpoint_seconds < 0:
            raise ScanError("checkpoint_seconds must be >= 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ScanError("max_tokens must be >= 1")


@dataclasses.dataclass
class ScanSummary:
    book: str
    tokens: int  # counted tokens (BOS excluded) in the book's scan
    sequences: int
    new_tokens: int  # scanned by this call
    seconds: float
    tokens_per_s: float
    resumed: bool
    complete: bool
    n_neurons: int
    n_heads: int
    dead_neurons: int  # never > 0
    book_bytes: int

    def __str__(self) -> str:
        return (f"scanned {self.tokens:,} tokens in {self.sequences:,} sequences"
                f"{' (resumed)' if self.resumed else ''}; this run {self.new_tokens:,} tokens in {self.seconds:.1f}s "
                f"({self.tokens_per_s:,.0f} tok/s)\n"
                f"{self.n_neurons} neurons ({self.dead_neurons} never fire), {self.n_heads} heads -> "
                f"{self.book} ({self.book_bytes / 2**20:.1f} MiB)")


# ------------------------------------------------------------------ other units
@dataclasses.dataclass(frozen=True)
class UnitSource:
    """Units the scan records besides the model's neurons and heads (dictionary features).

    ``kind``: a registered unit kind of the "activation" family; ``layer``: the layer slot of its unit
    addresses (a dictionary's number); ``n``: how many units; ``taps``: the forward taps it reads;
    ``acts(out)``: the units' activations [batch, pos, n] from the forward's taps ``out`` (every position:
    the scan counts the real ones); ``identity``: what names it in the scan's identity (JSON-able)."""

    kind: str
    layer: int
    n: int
    taps: tuple[str, ...]
    acts: Callable[[dict], torch.Tensor]
    identity: dict


# ------------------------------------------------------------------ state
class ScanState:
    """All accumulators (one per layer) and progress: seqs done, last (story, window), tokens.
    ``extras``: [(kind, layer, NeuronAccumulator)] of the scan's other sources, in source order."""

    def __init__(self, neurons: list[NeuronAccumulator], heads: list[HeadAccumulator], progress: dict,
                 extras: list | None = None):
        self.neurons, self.heads, self.progress = neurons, heads, progress
        self.extras = extras or []

    @classmethod
    def fresh(cls, cfg, s: ScanSettings, device, sources: tuple[UnitSource, ...] = ()) -> "ScanState":
        W = s.before + 1 + s.after
        return cls([NeuronAccumulator(cfg.d_mlp, s.k, s.r, W, cfg.d_vocab, device) for _ in range(cfg.n_layers)],
                   [HeadAccumulator(cfg.n_heads, s.k, W, cfg.d_vocab, s.pair_min, device) for _ in range(cfg.n_layers)],
                   {"sequences": 0, "tokens": 0, "batch": -1},
                   [(src.kind, src.layer, NeuronAccumulator(src.n, s.k, s.r, W, cfg.d_vocab, device)) for src in sources])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        d = {"neurons": [a.state() for a in self.neurons], "heads": [a.state() for a in self.heads]}
        if self.extras:
            d["extras"] = [{"kind": k, "layer": l, "state": a.state()} for k, l, a in self.extras]
        torch.save(d, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, progress: dict, device) -> "ScanState":
        st = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
        return cls([NeuronAccumulator.from_state(x) for x in st["neurons"]],
                   [HeadAccumulator.from_state(x) for x in st["heads"]], progress,
                   [(x["kind"], x["layer"], NeuronAccumulator.from_state(x["state"])) for x in st.get("extras", [])])

    def merge(self, other: "ScanState") -> None:
        for a, b in zip(self.neurons, other.neurons):
            a.merge(b)
        for a, b in zip(self.heads, other.heads):
            a.merge(b)
        for (_, _, a), (_, _, b) in zip(self.extras, other.extras):
            a.merge(b)
        for key in ("sequences", "tokens"):
            self.progress[key] += other.progress[key]


def save_state(book: Book, identity: dict, state: ScanState | None, progress: dict, complete: bool, conn=None) -> None:
    blob = state.to_bytes() if state is not None else None
    store.save_state_row(conn or book.conn, identity, progress, blob, complete)


def load_state(book: Book, device="cpu") -> tuple[dict, dict, ScanState | None, bool] | None:
    row = store.load_state_row(book)
    if row is None:
        return None
    identity, progress, blob, complete = row
    state = ScanState.from_bytes(blob, progress, device) if blob is not None else None
    return identity, progress, state, complete


# ------------------------------------------------------------------ corpus
def _stories(corpus) -> tuple[Iterable[str], str, str]:
    """(stories, corpus hash, description) for a path / hf: spec or an in-memory list of stories."""
    if isinstance(corpus, (str, Path)):
        return (lambda: read_stories(corpus)), corpus_hash(corpus), str(corpus)
    stories = list(corpus)
    h = hashlib.sha256("\x00".join(stories).encode()).hexdigest()[:16]
    return (lambda: iter(stories)), h, f"<{len(stories)} stories in memory>"


def _sequences(stories: Iterable[str], tokenizer, s: ScanSettings) -> Iterator[tuple[int, int, list[int]]]:
    """The whole corpus as (story, window, ids), BOS first, cut after max_tokens story tokens (whole
    sequences: the last one may run past the limit)."""
    prefix = [tokenizer.bos_id]
    body = s.max_len - 1
    done = 0
    for story, text in enumerate(stories):
        ids = tokenizer.encode(text)
        for w, start in enumerate(range(0, len(ids), body)):
            if s.max_tokens is not None and done >= s.max_tokens:
                return
            chunk = ids[start:start + body]
            done += len(chunk)
            yield story, w, prefix + chunk


def _batches(seqs, batch_size: int):
    pending = []
    for item in seqs:
        pending.append(item)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def shard_batches(stories: Iterable[str], tokenizer, s: ScanSettings, after: int = -1):
    """(global batch index, [(story, window, ids)]) of this shard: batch j of the corpus's batch stream
    goes to shard j mod n. Every shard forms the same batches as a single run, so it computes the very
    same activations (a forward's last bits can depend on the batch it runs in) and merged shards equal
    the single-run book. Batches up to ``after`` (done before a resume) are skipped."""
    i, n = s.shard
    for j, group in enumerate(_batches(_sequences(stories, tokenizer, s), s.batch_size)):
        if j % n == i and j > after:
            yield j, group


def _host_batches(batches, device):
    """(batch index, group, (tokens, mask, story, window)) padded on the host; pinned when the scan runs on
    CUDA, so the copies to the device can be asynchronous."""
    pin = torch.device(device).type == "cuda"
    for bi, group in batches:
        tokens, mask = pad([ids for _, _, ids in group])
        story = torch.tensor([g[0] for g in group])
        window = torch.tensor([g[1] for g in group])
        host = (tokens, mask, story, window)
        yield bi, group, tuple(t.pin_memory() for t in host) if pin else host


class prefetch:
    """Iterate ``items`` in a background thread, ``depth`` ahead: the tokenizer and the padding (the scan's
    corpus side) run while the model works on the previous batch. Same items, same order; an exception in
    the producer is raised in the consumer; ``close()`` stops the producer."""

    _END = object()

    def __init__(self, items, depth: int = 4):
        import queue
        import threading

        self._q: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._items = items
        self._thread = threading.Thread(target=self._produce, name="scan-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for x in self._items:
                if not self._put((None, x)):
                    return
        except BaseException as e:  # handed to the consumer
            self._put((e, None))
            return
        self._put((None, self._END))

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        err, x = self._q.get()
        if err is not None:
            raise err
        if x is self._END:
            raise StopIteration
        return x

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------ the scan
def resolve_settings(model, settings: ScanSettings | None = None, **overrides) -> ScanSettings:
    """The settings a scan of ``model`` runs with: ``overrides`` applied, max_len resolved, checked."""
    s = dataclasses.replace(settings or ScanSettings(), **overrides)
    s.shard = tuple(s.shard)
    if s.max_len is None:
        s.max_len = min(512, model.cfg.n_ctx)
    s.check(model.cfg.n_ctx)
    return s


def _identity(model, chash: str, s: ScanSettings, sources: tuple[UnitSource, ...] = ()) -> dict:
    ident = {"version": SCAN_VERSION, "model": model.fingerprint(), "corpus": chash,
             "dtype": str(model.weights.W_E.dtype), **s.identity()}
    if sources:  # absent for a neurons-and-heads scan: books scanned before sources existed still match
        ident["sources"] = [{"kind": src.kind, "layer": src.layer, "n": src.n, **src.identity} for src in sources]
    return ident


def scan_identity(model, corpus, settings: ScanSettings, sources: tuple[UnitSource, ...] = ()) -> dict:
    """The identity a scan of ``corpus`` with ``model`` and (resolved) ``settings`` records in its book:
    what a resume or a merge must match (scale/ checks shard books against it before running anything)."""
    return _identity(model, _stories(corpus)[1], settings, tuple(sources))


def _only_sources_differ(have: dict, want: dict) -> bool:
    return {k: v for k, v in have.items() if k != "sources"} == {k: v for k, v in want.items() if k != "sources"}


def held_identity(book_path: str | Path) -> tuple[dict, bool] | None:
    """(identity, complete) of the scan a book holds, or None (no book, or no scan in it)."""
    if not Path(book_path).exists():
        return None
    b = Book.open(book_path, create=False, readonly=True)
    try:
        row = store.load_state_row(b)
    finally:
        b.close()
    return None if row is None else (row[0], bool(row[3]))


def scan_corpus(model, corpus, book: Book | str | Path, settings: ScanSettings | None = None, *,
                overwrite: bool = False, keep_state: bool | None = None, progress: bool = True,
                on_batch=None, sources: tuple[UnitSource, ...] = (), **overrides) -> ScanSummary:
    """Scan ``corpus`` (a path, ``hf:NAME``, or a list of story strings) with ``model`` into ``book``.

    ``overrides`` set ScanSettings fields (``scan_corpus(m, path, book, k=16, max_tokens=10_000)``).
    ``keep_state``: keep the resumable state in the book after the scan finished (needed to merge;
    default: only for shards). Raises ScanError / BookError for a book holding another model's or
    corpus's scan (unless ``overwrite``) and for an empty corpus. ``on_batch(progress, new_tokens, seconds)``
    is called after every batch (scale/ uses it to report a shard's progress and for its fault injection).
    ``sources``: other units recorded in the same pass (module doc)."""
    s = resolve_settings(model, settings, **overrides)
    sources = tuple(sources)
    cfg = model.cfg
    if model.tokenizer is None or model.tokenizer.bos_id is None:
        raise ScanError("the scan needs the model's tokenizer with a BOS / story separator token "
                        "(every sequence starts with it and position 0 is left out of the statistics)")
    get_stories, chash, desc = _stories(corpus)  # a missing corpus fails before the book is created
    book = book if isinstance(book, Book) else Book.open(book)
    identity = _identity(model, chash, s, sources)
    if keep_state is None:
        keep_state = s.shard[1] > 1
    device = model.weights.W_E.device

    prev = load_state(book, device)
    if prev is not None and prev[0] != identity:
        if not overwrite and not _only_sources_differ(prev[0], identity):
            raise ScanError(_mismatch(book, prev[0], identity))
    have_fp = book.get_meta("model_fingerprint")
    if have_fp is not None and have_fp != identity["model"] and not overwrite:
        raise BookError(f"{book.path} describes model {book.get_meta('model_source')!r} (fingerprint {have_fp}), "
                        f"not {model.source!r} ({identity['model']}); use another book or --overwrite")
    book.bind_model(model, overwrite=overwrite)
    resumed = False
    if prev is not None and prev[0] == identity:
        _, prog, state, complete = prev
        if complete:
            return _summary(book, prog, 0, 0.0, resumed=True)
        resumed = True
    else:
        with book.transaction() as c:
            store.clear(c)
        state = None
    if state is None:
        state = ScanState.fresh(cfg, s, device, sources)
    prog = state.progress
    book.set_meta("scan_corpus", desc)
    run_id = book.start_run("scan", {**identity, "batch_size": s.batch_size, "corpus_path": desc})

    taps = [f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in ("attn.hook_pattern", "mlp.hook_post")]
    taps += [t for src in sources for t in src.taps if t not in taps]
    bar = None
    if progress:
        from ..progress import progress as progress_bar

        total = sum(1 for _ in get_stories()) if s.max_tokens is None else None
        bar = progress_bar(total=total, unit="story",
                           desc="scan" + (f" {s.shard[0]}/{s.shard[1]}" if s.shard[1] > 1 else ""))

    keep_freed_memory()  # batch after batch of [B, H, T, T] buffers: reuse them (model/memory.py)
    if use_kernels(NeuronAccumulator.kernels, model.weights.W_E):
        from . import kernels

        kernels.warm()  # load the compiled kernels now (~1-2 s; a first run compiles them: ~20 s)
    t0 = time.time()
    new_tokens, since = 0, 0
    ckpt_end, ckpt_cost = t0, 0.0
    feed = prefetch(_host_batches(shard_batches(get_stories(), model.tokenizer, s, after=prog["batch"]), device))
    try:
        for bi, group, (tokens, mask, story, window) in feed:
            nb = device.type == "cuda"  # pinned host memory: the copies overlap the previous batch's work
            tokens, mask = tokens.to(device, non_blocking=nb), mask.to(device, non_blocking=nb)
            ctx = BatchContext.build(tokens, mask, story.to(device, non_blocking=nb),
                                     window.to(device, non_blocking=nb), s.max_len, s.before, s.after)
            out = model.run(tokens, taps, lengths=mask.sum(1))  # position-wise steps on the real rows only
            for l in reversed(range(cfg.n_layers)):  # newest first: the last MLP output may still be in cache
                state.neurons[l].update(out[f"blocks.{l}.mlp.hook_post"], ctx)
                state.heads[l].update(out[f"blocks.{l}.attn.hook_pattern"], ctx)
            for src, (_, _, acc) in zip(sources, state.extras):
                acc.update(src.acts(out), ctx)
            del out
            n_tok = len(ctx.rows)
            prog["sequences"] += len(group)
            prog["tokens"] += n_tok
            prog["batch"] = bi
            prog["last"] = [group[-1][0], group[-1][1]]
            new_tokens += n_tok
            since += 1
            if on_batch is not None:
                on_batch(prog, new_tokens, time.time() - t0)
            if bar is not None:
                el = max(time.time() - t0, 1e-9)
                bar.update(group[-1][0] + 1 - bar.n)  # stories read so far (all shards read them all)
                bar.set_postfix_str(f"{new_tokens / el:,.0f} tok/s", refresh=False)
            # checkpoint every checkpoint_every batches and checkpoint_seconds, but after one that took c
            # seconds scan at least CHECKPOINT_RATIO * c before the next: the state (per-token sums,
            # windows) is 100+ MB, and writing it must not cost more than 1/CHECKPOINT_RATIO of the scan
            if since >= s.checkpoint_every and time.time() - ckpt_end >= max(s.checkpoint_seconds,
                                                                              CHECKPOINT_RATIO * ckpt_cost):
                c0 = time.time()
                with book.transaction() as c:
                    save_state(book, identity, state, prog, False, c)
                ckpt_end = time.time()
                ckpt_cost = ckpt_end - c0
                since = 0
    except KeyboardInterrupt:
        with book.transaction() as c:
            save_state(book, identity, state, prog, False, c)
        book.finish_run(run_id, {"tokens": prog["tokens"]}, status="interrupted")
        raise
    finally:
        feed.close()
        if bar is not None:
            bar.close()
    if prog["tokens"] == 0:
        raise CorpusError(f"corpus {desc} has no stories to scan" + (f" in shard {s.shard[0]}/{s.shard[1]}"
                                                                       if s.shard[1] > 1 else ""))
    seconds = time.time() - t0
    with book.transaction() as c:
        write_results(c, state, s)
        save_state(book, identity, state if keep_state else None, prog, True, c)
        # which stories the scan read (0..last), so scoring can refuse them as "held-out" (explain/score.py)
        book.set_meta("scan_stories", story_hashes(t for _, t in zip(range(prog["last"][0] + 1), get_stories())), c)
    if not keep_state:
        book.vacuum()  # give the dropped state's pages back
    book.checkpoint_wal()  # and the write-ahead log's
    summary = _summary(book, prog, new_tokens, seconds, resumed)
    book.finish_run(run_id, dataclasses.asdict(summary))
    return summary


def _mismatch(book: Book, have: dict, want: dict) -> str:
    diff = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    what = ", ".join(f"{k}: {have.get(k)!r} in the book vs {want.get(k)!r} now" for k in diff[:4])
    return (f"{book.path} holds a scan with different {', '.join(diff)} ({what}); "
            f"use another book or --overwrite to replace it")


def _summary(book: Book, prog: dict, new_tokens: int, seconds: float, resumed: bool) -> ScanSummary:
    n_neurons, dead, n_heads, complete = store.counts(book)
    size = sum(p.stat().st_size for p in book.path.parent.glob(book.path.name + "*"))
    return ScanSummary(str(book.path), prog["tokens"], prog["sequences"], new_tokens, seconds,
                       new_tokens / seconds if seconds > 0 else 0.0, resumed, complete, n_neurons, n_heads, dead, size)


# ------------------------------------------------------------------ results -> tables
def _example_rows(kind: str, layer: int, section: str, keys, vals, extra, tok, ctx_val, focus: int, band=None):
    """Rows for scan_examples from flattened example arrays (only filled slots)."""
    out = []
    keys, vals, extra = keys.tolist(), vals.tolist(), extra.tolist()
    tok, ctx_val = tok.cpu().numpy().astype(np.int32), ctx_val.cpu().numpy().astype(np.float32)
    for j, key in enumerate(keys):
        if key == EMPTY_KEY:
            continue
        unit, b, rank = band[j] if band is not None else (None, -1, None)
        story, offset = split_key(key)
        out.append((kind, layer, unit, section, b, rank, vals[j], story, offset, focus, extra[j],
                    tok[j].tobytes(), ctx_val[j].tobytes()))
    return out


def write_results(conn, state: ScanState, s: ScanSettings) -> None:
    """Replace the result tables with the state's findings (inside the caller's transaction)."""
    store.clear(conn, state=False)
    focus = s.before
    for a in state.neurons:
        a.top.canonicalize()
        a.bands.canonicalize()
    for h in state.heads:
        h.top.canonicalize()
    for _, _, a in state.extras:
        a.top.canonicalize()
        a.bands.canonicalize()
    for l, a in enumerate(state.neurons):
        _write_activation_units(conn, "neuron", l, a, s)
    for kind, l, a in state.extras:
        _write_activation_units(conn, kind, l, a, s)
    for l, h in enumerate(state.heads):
        means = h.means().tolist()
        store.insert_heads(conn, [(l, u, h.count, *means[u]) for u in range(h.n)])
        k = h.top.k
        tags = [(u, -1, j) for u in range(h.n) for j in range(k)]
        store.insert_examples(conn, _example_rows(
            "head", l, "top", h.top.keys.reshape(-1), h.top.vals.reshape(-1), h.top.extra.reshape(-1),
            h.top.ctx_tok.reshape(h.n * k, -1), h.top.ctx_val.reshape(h.n * k, -1), focus, tags))
        store.insert_head_pairs(conn, [(l, u, j, q, kk, m, c) for u in range(h.n)
                                       for j, (q, kk, m, c) in enumerate(h.top_pairs(u, s.pair_k))])


def _write_activation_units(conn, kind: str, l: int, a: NeuronAccumulator, s: ScanSettings) -> None:
    """One activation accumulator's rows: statistics (scan_neurons for neurons, else scan_unit_stats), top and
    band examples (scan_examples under ``kind``), token means (scan_token_means / scan_unit_token_means)."""
    focus = s.before
    mean, std = a.mean_std()
    fires = a.fire_count()
    n = a.n
    rows = [(l, u, a.count, m, sd, lo if a.count else None, hi if a.count else None, f / max(a.count, 1), e,
             json.dumps(h)) for u, (m, sd, lo, hi, f, e, h) in enumerate(zip(
                 mean.tolist(), std.tolist(), a.vmin.tolist(), a.vmax.tolist(), fires.tolist(),
                 a.hist.exp.tolist(), a.hist.counts.tolist()))]
    if kind == "neuron":
        store.insert_neurons(conn, rows)
    else:
        store.insert_unit_stats(conn, kind, rows)
    k = a.top.k
    tags = [(u, -1, j) for u in range(n) for j in range(k)]
    store.insert_examples(conn, _example_rows(
        kind, l, "top", a.top.keys.reshape(-1), a.top.vals.reshape(-1), a.top.extra.reshape(-1),
        a.top.ctx_tok.reshape(n * k, -1), a.top.ctx_val.reshape(n * k, -1), focus, tags))
    R = a.bands.r
    nb = a.bands.pri.shape[1]
    tags = [(u, b, j) for u in range(n) for b in range(nb) for j in range(R)]
    store.insert_examples(conn, _example_rows(
        kind, l, "quantile", a.bands.keys.reshape(-1), a.bands.vals.reshape(-1),
        torch.zeros(n * nb * R, dtype=torch.long), a.bands.ctx_tok.reshape(n * nb * R, -1),
        a.bands.ctx_val.reshape(n * nb * R, -1), focus, tags))
    ids, means, counts = a.token_means(s.token_k, s.token_min_count)
    tm = [(l, u, j, t, m, c) for u, (ti, mi, ci) in enumerate(zip(ids.tolist(), means.tolist(), counts.tolist()))
          for j, (t, m, c) in enumerate(zip(ti, mi, ci))]
    if kind == "neuron":
        store.insert_token_means(conn, tm)
    else:
        store.insert_unit_token_means(conn, kind, tm)

assert len(STATS) == 5
