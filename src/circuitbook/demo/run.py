"""``circuitbook demo``: the main job end to end on the embedded model, whose truth is known.

Every step runs the real stage (the same calls the CLI makes) and prints what it found next to what was
planted, so a user sees the tool work before pointing it at TinyStories. Everything lands in
``OUT/book.db``; ``circuitbook serve OUT/book.db --model OUT`` browses it.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

from ..book import Book
from ..corpus import batches
from .model import build_demo

PROMPT = "Once upon a time, there was a dog named Lily. She"


def _check(ok: bool) -> str:
    return "ok " if ok else "MISS"


def run_demo(out_dir: str | Path = "circuitbook-demo", seed: int = 0, echo=print, progress: bool = True) -> dict:
    from ..circuits.run import run_circuits
    from ..graph import ablate, attribute, to_svg
    from ..handcraft import coverage_from_book, evaluate_spec, parse_spec
    from ..scan import scan_corpus
    from ..roles.concepts import concept_search
    from ..roles.run import type_model
    from ..web.export import export_site

    out = Path(out_dir)
    demo = build_demo(seed=seed)
    demo.write(out)
    model, truth, stories = demo.model, demo.truth, demo.stories
    planted = {k: truth[k] for k in ("pronoun_verb", "article_noun", "search")}
    tok = model.tokenizer
    book_path = out / "book.db"
    for f in out.glob("book.db*"):
        f.unlink()  # the demo always starts from a fresh book
    book = Book.open(book_path)
    results: dict = {"truth": truth}

    echo(f"== circuitbook demo: handcrafted 1-layer GPT-Neo (d_model {model.cfg.d_model}, {model.cfg.n_heads} heads, "
         f"{model.cfg.d_mlp} neurons, vocab {model.cfg.d_vocab}), {len(stories)} generated stories -> {out}/")
    echo("   planted: " + ", ".join(f"{k} = neuron {v}" for k, v in planted.items()) +
         f", name-copying head = head {truth['copy_head']} (see truth.json)")

    # 1. scan
    echo("\n[1/6] scan: top / quantile examples, histograms, head statistics")
    s = scan_corpus(model, stories, book, k=16, progress=progress)
    echo("   " + str(s).replace("\n", "\n   "))
    from ..book import scan as bs

    for name, n in planted.items():
        top = bs.top_examples(book, "neuron", 0, n)
        reads = set(truth["rules"][name]["reads"])
        hits = sum(ex.tokens[ex.focus] in reads for ex in top)
        echo(f"   {_check(hits == len(top))} neuron {n} ({name}): {hits}/{len(top)} top examples are on its planted "
             f"input class, e.g. {tok.token_str(top[0].tokens[top[0].focus])!r} ({top[0].value:.2f})")
    results["scan_tokens"] = s.tokens

    # 2. circuits
    echo("\n[2/6] circuits from the weights: neuron effects, direct path, OV/QK, copying, detectors")
    cs = run_circuits(model, book, stories, progress=progress, echo=lambda *_: None)
    for line in cs.lines()[:6]:
        echo("   " + line)
    from ..book import circuits as bc

    for name, n in planted.items():
        eff = bc.stored_neuron_output_effect(book, 0, n)
        writes = set(truth["rules"][name]["writes"])
        k = min(len(writes), len(eff.top))
        got = sum(t in writes for t in eff.top.ids[:k])
        echo(f"   {_check(got == k)} neuron {n} promotes {got}/{k} of its planted output tokens in its top {k}: "
             + " ".join(repr(x) for x in eff.top.strs[:5]))
    copy_best = max(cs.copying, key=lambda x: x[2]) if cs.copying else None
    if copy_best:
        echo(f"   {_check(copy_best[1] == truth['copy_head'])} highest copying score: head {copy_best[0]}.{copy_best[1]} "
             f"({copy_best[2]:.2f}); planted copy head {truth['copy_head']}")

    # 3. typing + concept search
    echo("\n[3/6] typing: content vs syntax for every neuron (spaCy tags the corpus)")
    with redirect_stderr(io.StringIO()) if not progress else _null():
        tr = type_model(model, stories, book=book, progress=progress)
    echo("   " + tr.summary.table(n_rules=4, n_examples=3).replace("\n", "\n   "))
    from ..book import roles as bt

    types = {n: bt.unit_type(book, 0, n) for n in planted.values()}
    expect = {"pronoun_verb": "syntax", "article_noun": "syntax", "search": "content"}
    for name, n in planted.items():
        t = types[n]
        echo(f"   {_check(t is not None and t['type'] == expect[name])} neuron {n} ({name}) typed "
             f"{t['type'] if t else None} {t.get('rule') or '' if t else ''}")
    found = concept_search(model, "look search find seek", stories)
    best = found.hits[0] if found.hits else None
    if best is not None:
        echo(f"   {_check(best.kind == 'neuron' and best.idx == planted['search'])} concept search "
             f"'look search find seek': best unit {best.kind} {best.layer}.{best.idx} (score {best.score:.1f})")
    results["types"] = {k: types[v]["type"] if types[v] else None for k, v in planted.items()}

    # the researcher's labels: what typing said about the planted units, as a user would record them
    for name, n in planted.items():
        t = types[n]
        label = (t.get("rule") if t and t.get("rule") else name.replace("_", " "))
        book.set_label("neuron", 0, n, label=label, status="supported", notes=f"demo: planted {name}",
                       author="demo")
    book.set_label("head", 0, truth["copy_head"], label="name copying", status="supported", author="demo")

    # 4. attribution graph
    echo(f"\n[4/6] attribution graph for {PROMPT!r} -> its top prediction")
    g = attribute(model, PROMPT, labels=book.labelled(), max_nodes=12)
    echo(f"   target {g.target_str!r}, logit {g.logit:.2f}; top nodes by |effect|:")
    for node in sorted((n for n in g.nodes if n.kind != "logit"), key=lambda n: -abs(n.value))[:5]:
        echo(f"     {node.title:<40} {node.value:+.2f}" + (f"   [{node.label}]" if node.label else ""))
    pv = f"neuron/0/{planted['pronoun_verb']}"
    ab = ablate(model, PROMPT, [pv], target=g.target)
    echo(f"   ablating {pv}: logit {ab.logit_before:.2f} -> {ab.logit_after:.2f}")
    (out / "graph.svg").write_text(to_svg(g))

    # 5. handcraft + coverage
    echo("\n[5/6] handcraft the planted rules from their description, splice them in, measure")
    spec = parse_spec({"name": "demo-planted", "neurons": [
        {"name": k, "replaces": n, "input": {"ids": truth["rules"][k]["reads"]},
         "output": {"promote": {"ids": truth["rules"][k]["writes"]}}, "strength": 4, "bias": -2, "gain": 2}
        for k, n in planted.items()]})
    r = evaluate_spec(spec, model, stories[:200], stories[200:], truth["classes"], batch_size=16)
    echo("   " + r.evaluation.summary(n_groups=3).replace("\n", "\n   "))
    results["loss_recovered"] = r.evaluation.recovered

    def corpus_batches():
        return batches(stories[200:], tok, 256, 16)

    cov = coverage_from_book(book, model, corpus_batches)
    echo("   coverage of the labelled units: " + cov.summary().replace("\n", "\n   "))
    from ..book import handcraft as bh

    bh.save_coverage(book, cov.to_dict(), model.fingerprint(), "demo stories[200:]")
    results["coverage"] = cov.recovered

    # 6. the book, browsable
    echo("\n[6/6] the book")
    n = export_site(book, out / "site", progress=False)
    echo(f"   {book_path} holds it all; static site: {out / 'site' / 'index.html'} ({n} pages)")
    echo(f"   browse and edit: circuitbook serve {book_path} --model {out}")
    return results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
