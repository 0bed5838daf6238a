"""Graphs as hypotheses, end to end: save, group, test, look (issue 17's closing showcase).

On the demo model (``circuitbook.demo.build_demo``) with the demo's prompt, and on ts-1l-dev
(../shared/assets) with three TinyStories-style prompts, for every prompt this

  1. computes the attribution graph with influence pruning (circuit-tracer's rule: nodes 0.8, edges 0.98 of
     the target's influence, from the 300 largest nodes) and saves it in a book;
  2. auto-groups supernodes (shared book label, shared type, same unit, same source position) and checks
     that every supernode edge weight is the sum of the member edges it replaces (max abs difference
     against an exactly rounded sum, ``math.fsum``), and that the collapsed edges plus the edges inside
     groups add up to the graph's edges;
  3. attaches one hypothesis to the supernode of largest |value| (the sum of its members' values): "zero-
     ablating it moves the target logit in the direction of that value by at least THRESHOLD logits"
     (--threshold, default 0.5, the value the repository's own tests state), runs it by ablation and records
     the evidence (supported / refuted by that threshold); the graph's summed value is printed beside the
     measured change (it counts a path once per member on it, so it overstates chained members). When
     auto-grouping finds no group (no two unit nodes share anything: the demo's pruned graph keeps one
     neuron), the unit node of largest |value| becomes a one-node "user" supernode named by its label;
  4. screenshots the saved graph's supernode view in headless Chromium from a live server;
  5. writes the circuit-tracer graph JSON with feature files for its unit nodes (``graphs export
     --features``) next to the screenshots.

Books: the demo book is scanned on the demo's stories, has the circuits stage and the demo's labels for
its planted units (as ``circuitbook demo`` records them); the ts-1l-dev book is scanned on the first
``--stories`` TinyStories stories (its feature files have no top / bottom logits: no circuits stage).
Everything is written under OUT (default /tmp/circuitbook-graph-showcase), never into the repository.

Usage: python benchmarks/graph_showcase.py [OUT] [--stories 120] [--skip-screenshots]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header, load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("CIRCUITBOOK_ASSETS") or ROOT.parent / "shared" / "assets")
TS_PROMPTS = {
    "ts-lily": "Once upon a time, there was a little girl named Lily. She",
    "ts-tom": "Tom and his dog went to the park. Tom",
    "ts-bird": "One day, a little bird was looking for",
}
CHROMIUM = os.environ.get("CIRCUITBOOK_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CIRCUITBOOK_CHROMEDRIVER", "/usr/bin/chromedriver")


# --------------------------------------------------------------------------- the checks
def edge_sums(g, groups) -> tuple[float, float, int, int]:
    """(max |collapsed weight - fsum of its member edges|, |sum of all edges - (collapsed + internal)|,
    collapsed edges, how many of them replace two or more member edges)."""
    from circuitbook.graph.supernodes import collapse

    c = collapse(g, groups)
    owner = {m: s.name for s in groups for m in s.members}
    members: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in g.edges:
        a = f"super/{owner[e.source]}" if e.source in owner else e.source
        b = f"super/{owner[e.target]}" if e.target in owner else e.target
        if a != b:
            members[(a, b)].append(e.weight)
    got = {(e.source, e.target): e.weight for e in c.edges}
    assert set(got) == set(members), "collapsed edges are not the member edges' pairs"
    worst = max((abs(w - math.fsum(members[k])) for k, w in got.items()), default=0.0)
    total = abs(math.fsum(e.weight for e in g.edges) - math.fsum([*got.values(), c.settings["internal_weight"]]))
    return worst, total, len(got), sum(len(members[k]) > 1 for k in got)


def showcase_one(book, model, name: str, prompt: str, out: Path, threshold: float = 0.5, echo=print) -> dict:
    from circuitbook.graph import saved
    from circuitbook.graph.feature_files import write_for_frontend
    from circuitbook.graph.prune import attribute_pruned

    t = time.perf_counter()
    g, rep = attribute_pruned(model, prompt, pool=300, node_share=0.8, edge_share=0.98, labels=book.labelled())
    saved.save(book, name, g, prompt, model.fingerprint(), overwrite=True, extra_settings={"pool": 300})
    groups = saved.auto_group(book, name)
    fallback = None
    if not groups:
        from circuitbook.graph.supernodes import Supernode

        units = [n for n in g.nodes if n.kind in ("head", "neuron")]
        if units:
            top = max(units, key=lambda n: abs(n.value))
            fallback = Supernode((top.label or top.title).replace("/", "\u2215"), [top.id], "user")
            saved.set_groups(book, name, [fallback])
    s = saved.load(book, name)
    worst, total, n_edges, n_multi = edge_sums(s.graph, s.supernodes)
    echo(f"\n== {name}: {prompt!r} -> {g.target_str!r} (logit {g.logit:.4f})")
    echo(f"   pruning: {rep.nodes_before} -> {rep.nodes_after} nodes, {rep.edges_before} -> {rep.edges_after} edges; "
         f"retained influence {rep.kept:.4f} of {rep.total:.4f} ({100 * rep.retained:.1f}%)")
    by_rule = defaultdict(int)
    for x in groups:
        by_rule[x.rule] += 1
    echo(f"   supernodes: {len(groups)} auto (" + (", ".join(f"{k} {v}" for k, v in by_rule.items()) or "none") + ")"
         + (f"; none found, so one by hand: {fallback.name!r} = {fallback.members}" if fallback else ""))
    echo(f"   supernode edges = sums of member edges: max |diff| {worst:.3g} over {n_edges} collapsed edges "
         f"({n_multi} of them sums of 2+ member edges); all edges vs collapsed + internal {total:.3g}")
    res = {"name": name, "prompt": prompt, "target": g.target_str, "nodes_before": rep.nodes_before,
           "nodes_after": rep.nodes_after, "retained": rep.retained, "supernodes": len(groups),
           "user_supernodes": int(fallback is not None),
           "edge_max_diff": worst, "edge_total_diff": total}
    if not s.supernodes:
        echo("   no supernode to test (the pruned graph keeps no head or neuron)")
        res["verdict"] = None
    else:
        vals = {x.name: sum(s.graph.node(m).value for m in x.members) for x in s.supernodes}
        best = max(s.supernodes, key=lambda x: abs(vals[x.name]))
        v = vals[best.name]
        expect = "decrease" if v > 0 else "increase"
        thr = threshold
        text = (f"supernode {best.name!r} ({best.rule}, {len(best.members)} nodes; graph value {v:+.3f}) drives "
                f"logit {g.target_str!r}: zero-ablating it should {expect} the logit by at least {thr:g}")
        hid = saved.add_hypothesis(book, name, text, {"supernode": best.name, "how": "zero", "expect": expect}, thr)
        r = saved.run_hypothesis(book, name, hid, model)
        x = r["result"]
        echo(f"   hypothesis {hid}: {text}")
        echo(f"   verdict: {r['verdict']} -- logit {x['logit_before']:.4f} -> {x['logit_after']:.4f} "
             f"(delta {x['delta']:+.4f}, threshold {thr:.4f} {expect}); p({g.target_str!r}) {x['prob_before']:.4f} -> "
             f"{x['prob_after']:.4f} (delta {x['prob_delta']:+.4f}); now predicts "
             + ", ".join(f"{tt[1]!r} {tt[2]:.3f}" for tt in x["top_after"][:3]))
        res.update(hypothesis=text, verdict=r["verdict"], delta=x["delta"], prob_delta=x["prob_delta"], value=v)
    ct = out / "circuit-tracer"
    ct.mkdir(parents=True, exist_ok=True)
    fx = write_for_frontend(book, s, ct / f"{name}.json", ct / "features" / name)
    echo(f"   circuit-tracer: {fx.graph_path} + {len(fx.feature_paths)} feature files under {ct / 'features' / name}"
         f"  ({time.perf_counter() - t:.1f} s)")
    return res


# --------------------------------------------------------------------------- browser
@contextlib.contextmanager
def live_server(app):
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cb-showcase-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_css(driver, css, timeout=60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, css) or False)


def screenshots(book_path: Path, names: list[str], out: Path, driver, echo=print) -> list[Path]:
    """The supernode view of each saved graph, from a fresh server on the book (no model: saved graphs
    re-render from the book alone)."""
    from circuitbook.book import Book
    from circuitbook.web import create_app

    paths = []
    with live_server(create_app(Book.open(book_path, create=False, readonly=True), model=None)) as url:
        for name in names:
            driver.get(f"{url}/graph/{name}?view=supernodes")
            svg = wait_css(driver, "#saved-graph svg")[0]
            # the page scrolls a wide graph inside its box (max-width 1400px): lift that for the picture only
            w, h = driver.execute_script(
                "const box = document.getElementById('saved-graph'), main = box.closest('main');"
                "if (main) main.style.maxWidth = 'none';"
                "Object.assign(box.style, {overflow: 'visible', maxHeight: 'none', width: 'max-content'});"
                "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", svg)
            driver.set_window_size(max(1400, int(w) + 120), max(1000, int(h) + 600))
            el = wait_css(driver, "#saved-graph")[0]
            view = el.get_attribute("data-view")
            n_super = len(driver.find_elements("css selector", "#saved-graph .cb-supernode"))
            p = out / f"{name}-supernodes.png"
            el.screenshot(str(p))
            echo(f"   screenshot {p} (view {view}, {n_super} supernode boxes drawn, {p.stat().st_size} bytes)")
            paths.append(p)
    return paths


# --------------------------------------------------------------------------- books
def demo_book(path: Path, echo=print):
    from circuitbook.book import Book
    from circuitbook.circuits.run import run_circuits
    from circuitbook.demo import build_demo
    from circuitbook.scan import scan_corpus

    demo = build_demo()
    book = Book.open(path)
    scan_corpus(demo.model, demo.stories, book, k=16, progress=False)
    run_circuits(demo.model, book, demo.stories, progress=False, echo=lambda *_: None)
    t = demo.truth
    for name in ("pronoun_verb", "article_noun", "search"):  # the labels `circuitbook demo` records
        book.set_label("neuron", 0, t[name], label=name.replace("_", " "), status="supported", author="showcase")
    book.set_label("head", 0, t["copy_head"], label="name copying", status="supported", author="showcase")
    echo(f"demo book {path}: {len(demo.stories)} stories scanned, circuits, labels for the planted units")
    return demo.model, book


def ts1l_book(path: Path, n_stories: int, echo=print):
    from circuitbook.book import Book
    from circuitbook.model import load_model
    from circuitbook.scan import scan_corpus

    model = load_model(ASSETS / "ts-1l-dev")
    text = (ASSETS / "tinystories-text" / "TinyStories-valid.prefix-1841stories.txt").read_text(encoding="utf-8-sig")
    stories = [s.strip() for s in text.split("<|endoftext|>")[:n_stories]]
    book = Book.open(path)
    t = time.perf_counter()
    s = scan_corpus(model, stories, book, k=8, r=2, progress=False)
    echo(f"ts-1l-dev book {path}: first {n_stories} TinyStories stories scanned ({s.tokens} tokens, "
         f"{time.perf_counter() - t:.0f} s)")
    return model, book


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="/tmp/circuitbook-graph-showcase", help="output folder")
    ap.add_argument("--stories", type=int, default=120, help="TinyStories stories to scan for ts-1l-dev (120)")
    ap.add_argument("--threshold", type=float, default=0.5, help="the hypotheses' logit change (0.5)")
    ap.add_argument("--skip-screenshots", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    if out == ROOT or ROOT in out.parents:
        ap.error(f"{out} is inside the repository; give a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    for f in list(out.glob("*.db*")):
        f.unlink()  # fresh books every run
    header()
    t0 = time.perf_counter()
    from circuitbook.demo.run import PROMPT as DEMO_PROMPT

    results = []
    model, book = demo_book(out / "demo.db")
    results.append(showcase_one(book, model, "demo", DEMO_PROMPT, out, a.threshold))
    book.close()
    model, book = ts1l_book(out / "ts1l.db", a.stories)
    for name, prompt in TS_PROMPTS.items():
        results.append(showcase_one(book, model, name, prompt, out, a.threshold))
    book.close()
    if not a.skip_screenshots:
        print("\n== supernode views (headless Chromium, live server)")
        with chromium() as driver:
            screenshots(out / "demo.db", ["demo"], out, driver)
            screenshots(out / "ts1l.db", list(TS_PROMPTS), out, driver)
    print(f"\n{'graph':8s} {'nodes':>11s} {'retained':>9s} {'super':>7s} {'edge diff':>9s}  {'verdict':9s} "
          f"{'value':>7s} {'delta':>8s} {'dp':>8s}")
    for r in results:
        d = f"{r['value']:+7.3f} {r['delta']:+8.4f} {r['prob_delta']:+8.4f}" if r.get("verdict") else ""
        sup = f"{r['supernodes']}" + ("+1u" if r["user_supernodes"] else "")
        print(f"{r['name']:8s} {r['nodes_before']:4d} -> {r['nodes_after']:3d} {100 * r['retained']:8.1f}% "
              f"{sup:>7s} {r['edge_max_diff']:9.2g}  {r.get('verdict') or '-':9s} {d}")
    print(f"done in {time.perf_counter() - t0:.0f} s {load()}; everything under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
