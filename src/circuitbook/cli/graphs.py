"""circuitbook graphs BOOK ACTION: saved attribution graphs (list, show, recompute, group, hypothesis, test, export, import).

    graphs BOOK list
    graphs BOOK show NAME [--grouped] [--svg F] [--json F]          no model needed
    graphs BOOK recompute NAME --model M                            says whether the model changed
    graphs BOOK group NAME --auto | --add SUPERNODE NODE [NODE ...]
    graphs BOOK hypothesis NAME TEXT (--supernode S | --nodes ID ...) [--how zero|mean|resample|patch|steer]
                [--expect decrease|increase] --threshold LOGITS [--other PROMPT] [--scale X]
    graphs BOOK test NAME --hypothesis ID --model M                 runs and records the evidence
    graphs BOOK export NAME OUT.json [--features DIR]               Neuronpedia / circuit-tracer graph JSON;
                                                                    with --features also a feature file per
                                                                    head / neuron node (the book's scan)
    graphs BOOK import FILE.json NAME                               a circuit-tracer graph JSON, for display
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_model_args, check_output_file, load


def register(sub) -> None:
    p = sub.add_parser("graphs", help="saved attribution graphs: list, show, group, hypotheses, tests, exchange",
                       description=__doc__.splitlines()[0])
    p.add_argument("book", help="the book holding the saved graphs")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    acts.add_parser("list", help="list saved graphs")
    s = acts.add_parser("show", help="print a saved graph (no model needed)")
    s.add_argument("name")
    s.add_argument("--grouped", action="store_true", help="at supernode level")
    s.add_argument("--svg", help="write the SVG here")
    s.add_argument("--json", help="write the graph JSON here")
    r = acts.add_parser("recompute", help="recompute with a model and compare")
    r.add_argument("name")
    r.add_argument("--model", required=True)
    add_model_args(r, required=False)
    g = acts.add_parser("group", help="store supernodes")
    g.add_argument("name")
    g.add_argument("--auto", action="store_true", help="group by the book's labels, types and same unit")
    g.add_argument("--add", nargs="+", metavar=("SUPERNODE", "NODE"), help="a supernode name and its node ids")
    h = acts.add_parser("hypothesis", help="attach a hypothesis and its test")
    h.add_argument("name")
    h.add_argument("text")
    h.add_argument("--supernode")
    h.add_argument("--nodes", nargs="+")
    h.add_argument("--how", default="zero", help="zero | mean | resample | patch | steer (default zero)")
    h.add_argument("--expect", default="decrease", help="decrease | increase (default decrease)")
    h.add_argument("--threshold", type=float, required=True, help="logit change that supports the hypothesis")
    h.add_argument("--other", help="patch: the prompt to patch from")
    h.add_argument("--scale", type=float, help="steer: the factor")
    t = acts.add_parser("test", help="run a hypothesis' test and record the evidence")
    t.add_argument("name")
    t.add_argument("--hypothesis", type=int, required=True)
    t.add_argument("--model", required=True)
    add_model_args(t, required=False)
    e = acts.add_parser("export", help="write the Neuronpedia / circuit-tracer graph JSON")
    e.add_argument("name")
    e.add_argument("out")
    e.add_argument("--features", metavar="DIR",
                   help="also write circuit-tracer feature files (the book's unit pages) for every head / neuron "
                        "node into DIR (inside OUT's folder), point the graph at them and list it in that "
                        "folder's graph-metadata.json, so their local frontend opens graph and features; one DIR per "
                        "graph, e.g. ct/features/NAME")
    i = acts.add_parser("import", help="save a circuit-tracer graph JSON in the book, for display")
    i.add_argument("file")
    i.add_argument("name")
    i.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def _book(path: str, write: bool):
    from ..book import Book

    if not Path(path).is_file():
        raise CircuitbookError(f"book {path} does not exist")
    return Book.open(path, create=False, readonly=not write)


def run(args) -> int:
    from ..graph import saved

    write = args.action not in ("list", "show", "export", "recompute")
    for opt, out in (("--svg", getattr(args, "svg", None)), ("--json", getattr(args, "json", None)),
                     ("OUT", args.out if args.action == "export" else None)):
        if out:
            check_output_file(out, opt)
    book = _book(args.book, write)
    if args.action == "list":
        from ..book.graphs import saved_graphs

        for r in saved_graphs(book):
            print(f"{r['name']:24s} {r['n_nodes']:4d} nodes {r['n_edges']:5d} edges {r['n_supernodes']:3d} supernodes "
                  f"{r['n_hypotheses']:3d} hypotheses  {r['prompt'][:60]!r}")
        return 0
    if args.action == "show":
        from ..graph import to_json, to_svg

        s = saved.load(book, args.name)
        g = s.grouped() if args.grouped else s.graph
        print(f"{s.name}: {s.prompt!r} -> {g.target_str!r} logit {g.logit:.4f}; {len(g.nodes) - 1} nodes, "
              f"{len(g.edges)} edges, {len(s.supernodes)} supernodes (model {s.model_fingerprint})")
        for n in sorted(g.nodes[:-1], key=lambda n: -abs(n.value))[:15]:
            print(f"  {n.title:28s} {n.value:+9.4f}  {n.label or ''}")
        if args.svg:
            Path(args.svg).write_text(to_svg(g))
        if args.json:
            Path(args.json).write_text(json.dumps(to_json(g), indent=1))
        return 0
    if args.action == "recompute":
        numbers = saved.saved_transcoders(book, args.name)
        if numbers:  # the dictionaries the graph was built with (before the model loads)
            from ..dictionary.store import load_from_book

            stored = [load_from_book(book, n) for n in numbers]
        model = load(args)
        tcs = None
        if numbers:
            from ..dictionary.graph import graph_transcoder

            tcs = [graph_transcoder(d, row["number"], row["name"], model.cfg) for d, row in stored]
        g, changed = saved.recompute(book, args.name, model, labels=book.labelled(), transcoders=tcs)
        old = saved.load(book, args.name).graph
        print(("the model CHANGED since the graph was saved; " if changed else "same model; ") +
              f"logit {old.logit:.4f} -> {g.logit:.4f}, {len(g.nodes) - 1} nodes")
        return 0
    if args.action == "group":
        from ..graph.supernodes import Supernode

        if bool(args.auto) == bool(args.add):
            raise CircuitbookError("give --auto or --add SUPERNODE NODE ...")
        if args.auto:
            groups = saved.auto_group(book, args.name)
        else:
            if len(args.add) < 2:
                raise CircuitbookError("--add takes a supernode name and at least one node id")
            groups = saved.set_groups(book, args.name, [Supernode(args.add[0], args.add[1:], "user")])
        for gr in groups:
            print(f"{gr.name} ({gr.rule}): {len(gr.members)} nodes")
        return 0
    if args.action == "hypothesis":
        test = {"how": args.how, "expect": args.expect, "supernode": args.supernode, "nodes": args.nodes,
                "other": args.other, "scale": args.scale}
        hid = saved.add_hypothesis(book, args.name, args.text, test, args.threshold)
        print(f"hypothesis {hid} attached to {args.name!r}")
        return 0
    if args.action == "test":
        r = saved.run_hypothesis(book, args.name, args.hypothesis, load(args))
        print(f"hypothesis {args.hypothesis}: " + saved.to_text(r))
        return 0
    from ..graph import exchange

    if args.action == "export" and args.features:
        from ..graph.feature_files import write_for_frontend

        r = write_for_frontend(book, saved.load(book, args.name), args.out, args.features)
        print(f"wrote {args.out} ({len(r.graph['nodes'])} nodes, {len(r.graph['links'])} links), "
              f"{len(r.feature_paths)} feature files under {args.features} ({r.url_prefix}/L<layer>/<feature>.json) "
              f"and {r.metadata_path.name}")
        if Path(args.out).name != f"{args.name}.json":
            print(f"note: circuit-tracer's frontend fetches slug {args.name!r} as {args.name}.json in that folder")
        return 0
    if args.action == "export":
        d = exchange.export_saved(saved.load(book, args.name), book)
        Path(args.out).write_text(json.dumps(d))
        print(f"wrote {args.out} ({len(d['nodes'])} nodes, {len(d['links'])} links)")
        return 0
    try:
        d = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as e:
        raise CircuitbookError(f"cannot read {args.file}: {e}") from None
    try:
        g = exchange.import_graph(d)
    except CircuitbookError as e:
        raise CircuitbookError(f"{args.file}: {e}") from None
    saved.save(book, args.name, g, d.get("metadata", {}).get("prompt", ""), None, overwrite=args.overwrite,
               extra_settings={"imported": "circuit-tracer"})
    print(f"imported {args.file} as {args.name!r}: {len(g.nodes)} nodes, {len(g.edges)} edges")
    return 0
