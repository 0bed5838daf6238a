"""Web workbench latency on a book of the TinyStories-1Layer-21M's size, and the prompt page's graph on CPU.

1. Book: a random-weight model with the exact 1L-21M config (GPT-Neo, d_model 1024, 16 heads, 4096 neurons,
   GPT-2 vocabulary) scanned by the real scan stage (``scan_corpus``, k=32 top examples + quantile samples per
   neuron) over real TinyStories text, so every neuron has 32 top examples and its histogram, and optionally
   analysed by the real circuits stage (``--circuits``). 300 units get labels.
2. Pages: ``circuitbook serve`` in its own process on 127.0.0.1, fetched over HTTP (httpx, sequential): p50 / p95 of neuron
   pages (random neurons), head pages and the index. Anchors measured in the same run: a static file over the
   same HTTP stack (the transport floor) and ``book.neuron(l, i)`` (the book read a page needs).
3. Graph: ts-1l-dev (../shared/assets), a 64-token prompt: ``attribute`` alone (anchor) and the whole prompt
   page (predictions + graph + SVG) over HTTP, each prompt new so no cache helps. Target: < 1 s.

4. Static export: seconds per page written (``export_site``), extrapolated to the whole book.

Usage: python benchmarks/bench_web.py [--stories 60] [--neurons 200] [--circuits] [--book PATH (reuse)]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from circuitbook.book import Book
from circuitbook.corpus import read_stories

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"


@contextlib.contextmanager
def serve(book: Path, model: Path | None = None):
    """``circuitbook serve`` in its own process (as a user runs it) on a free port; yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "circuitbook.cli", "serve", str(book), "--port", str(port)]
    proc = subprocess.Popen(cmd + (["--model", str(model)] if model else []), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                httpx.get(url + "/static/style.css", timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("circuitbook serve did not start")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def line(name, xs, unit="ms"):
    print(f"  {name:<34} p50 {pct(xs, 50):8.1f} {unit}   p95 {pct(xs, 95):8.1f} {unit}   (n={len(xs)})")


def build_book(path: Path, n_stories: int, circuits: bool) -> None:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from circuitbook.model import Tokenizer, from_hf_model
    from circuitbook.scan.run import scan_corpus

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=1024, num_layers=1, num_heads=16,
                       attention_types=[[["global"], 1]], window_size=256, intermediate_size=None)
    model = from_hf_model(GPTNeoForCausalLM(cfg).eval(), Tokenizer.from_dir(ASSETS / "gpt2-tokenizer"),
                          source="random-1L-21M")
    stories = list(itertools.islice(read_stories(ASSETS / "tinystories-text" /
                                                 "TinyStories-valid.prefix-1841stories.txt"), n_stories))
    t = time.perf_counter()
    print(scan_corpus(model, stories, path, progress=False, k=32))
    print(f"  (scan: {time.perf_counter() - t:.0f} s)")
    book = Book.open(path)
    if circuits:
        from circuitbook.circuits.run import run_circuits

        t = time.perf_counter()
        run_circuits(model, book, stories[:20], progress=False)
        print(f"  (circuits: {time.perf_counter() - t:.0f} s)")
    rng = random.Random(0)
    for i in rng.sample(range(4096), 290):
        book.set_label("neuron", 0, i, label=f"label {i}", notes="benchmark note", status="hypothesis")
    for h in range(10):
        book.set_label("head", 0, h, label=f"head {h}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", type=int, default=60, help="stories scanned into the book (default 60)")
    ap.add_argument("--neurons", type=int, default=200, help="neuron pages fetched (default 200)")
    ap.add_argument("--circuits", action="store_true", help="also run the circuits stage on the book")
    ap.add_argument("--book", default=None, help="reuse (or create) this book instead of a temporary one")
    ap.add_argument("--graphs", type=int, default=5, help="64-token prompts timed (default 5)")
    ap.add_argument("--export", type=int, default=200, help="neuron pages written by the static export (default 200)")
    a = ap.parse_args()
    from machine import header

    header()

    tmp = tempfile.TemporaryDirectory()
    path = Path(a.book) if a.book else Path(tmp.name) / "book.db"
    if not path.exists():
        print(f"building a 1L-21M-sized book at {path} ...")
        build_book(path, a.stories, a.circuits)
    book = Book.open(path)
    cfg = book.config
    n_ex = book.conn.execute("SELECT count(*) FROM scan_examples WHERE kind='neuron' AND section='top'").fetchone()[0]
    print(f"book: {cfg['d_mlp']} neurons x {n_ex // max(cfg['d_mlp'], 1)} top examples (+ quantile samples), "
          f"{cfg['n_heads']} heads, {path.stat().st_size / 2**20:.0f} MiB, sections {sorted(book.schema_versions())}")

    rng = random.Random(1)
    neurons = rng.sample(range(cfg["d_mlp"]), a.neurons)
    t_read = []
    for i in neurons[:50]:
        t = time.perf_counter()
        book.neuron(0, i)
        t_read.append(1000 * (time.perf_counter() - t))

    with serve(path) as url, httpx.Client(base_url=url, timeout=60) as c:
        def get(u):
            t = time.perf_counter()
            r = c.get(u)
            dt = 1000 * (time.perf_counter() - t)
            assert r.status_code == 200, (u, r.status_code)
            return dt, len(r.content)

        for u in ("/static/style.css", f"/neuron/0/{neurons[0]}", "/head/0/0", "/"):  # warm-up
            get(u)
        t_static = [get("/static/style.css")[0] for _ in range(50)]
        res = [get(f"/neuron/0/{i}") for i in neurons]
        t_neuron, size = [r[0] for r in res], statistics.mean(r[1] for r in res)
        t_head = [get(f"/head/0/{h}")[0] for h in range(cfg["n_heads"]) for _ in range(3)]
        t_index = [get("/")[0] for _ in range(10)]
        t_search = [get(f"/?q=label+{i}")[0] for i in range(10)]

    print("page latency over HTTP (uvicorn on 127.0.0.1, sequential requests):")
    line("static file (anchor: HTTP floor)", t_static)
    line("book.neuron(l, i) (anchor: data)", t_read)
    line(f"neuron page (~{size / 1024:.0f} KiB)", t_neuron)
    line("head page", t_head)
    line("index (4112 units, first 500 rows)", t_index)
    line("index text search", t_search)
    p95 = pct(t_neuron, 95)
    print(f"  neuron page p95 {p95:.1f} ms vs target 100 ms: {'OK' if p95 < 100 else 'MISSED'} "
          f"(x{p95 / pct(t_static, 95):.1f} the HTTP floor, x{pct(t_neuron, 50) / pct(t_read, 50):.1f} the book read)")

    # ---- static export (read-only book, files on disk)
    from circuitbook.web import export_site

    t = time.perf_counter()
    n = export_site(Book.open(path, readonly=True), Path(tmp.name) / "site",
                    units=[("neuron", 0, i) for i in neurons[: a.export]], progress=False)
    dt = time.perf_counter() - t
    print(f"static export: {n} pages (index + {n - 1} neuron pages) in {dt:.1f} s, {1000 * dt / n:.0f} ms/page "
          f"-> the whole book ({cfg['d_mlp'] + cfg['n_heads']} unit pages) in ~{dt / n * (cfg['d_mlp'] + cfg['n_heads']):.0f} s")

    # ---- graph for a 64-token prompt on ts-1l-dev
    from circuitbook.graph import attribute
    from circuitbook.model import load_model

    model = load_model(ASSETS / "ts-1l-dev")
    gbook = Book.open(Path(tmp.name) / "graph.db")
    gbook.bind_model(model)
    texts = [s for s in itertools.islice(read_stories(ASSETS / "tinystories-text" /
                                                      "TinyStories-valid.prefix-1841stories.txt"), 200)
             if len(model.tokenizer.encode(s)) >= 70][: 2 * a.graphs + 1]
    prompts = [model.tokenizer.decode(model.tokenizer.encode(s)[:63]) for s in texts]  # + BOS = 64 tokens
    prompts = [p for p in prompts if model.to_tokens(p).shape[1] == 64][: 2 * a.graphs + 1]
    attribute(model, prompts[0])  # warm-up
    t_attr = []
    for p in prompts[1:a.graphs + 1]:
        t = time.perf_counter()
        attribute(model, p, labels=gbook.labelled())
        t_attr.append(1000 * (time.perf_counter() - t))
    gbook.close()
    with serve(gbook.path, ASSETS / "ts-1l-dev") as url, httpx.Client(base_url=url, timeout=120) as c:
        c.get("/prompt", params={"text": prompts[0]})  # warm-up
        t_page = []
        for p in prompts[a.graphs + 1:]:
            t = time.perf_counter()
            r = c.get("/prompt", params={"text": p})
            t_page.append(1000 * (time.perf_counter() - t))
            assert r.status_code == 200 and 'id="graph"' in r.text
    print(f"attribution graph, 64-token prompt, ts-1l-dev on CPU ({torch.get_num_threads()} threads):")
    line("graph.attribute (anchor)", t_attr)
    line("prompt page over HTTP (preds+graph+SVG)", t_page)
    p95 = pct(t_page, 95)
    print(f"  prompt page p95 {p95:.0f} ms vs target 1000 ms: {'OK' if p95 < 1000 else 'MISSED'} "
          f"(x{pct(t_page, 50) / pct(t_attr, 50):.2f} the bare graph)")


if __name__ == "__main__":
    main()
