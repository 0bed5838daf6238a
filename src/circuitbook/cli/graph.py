"""circuitbook graph MODEL "prompt": attribution graph of one predicted token (print, --json, --svg, --save)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_model_args, check_output_file, load


def register(sub) -> None:
    p = sub.add_parser("graph", help="attribution graph for a prompt's next token (exact logit decomposition)",
                       description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("prompt", help="prompt text (the BOS token is prepended)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--token", help="target token as text, e.g. ' was' (default: the model's top prediction)")
    t.add_argument("--token-id", type=int, help="target token id")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--contrast", help="attribute logit(token) - logit(contrast) instead")
    c.add_argument("--contrast-id", type=int, help="contrast token id")
    p.add_argument("--pos", type=int, default=-1, help="target position (default -1: the last token)")
    p.add_argument("--nodes", type=int, default=40, help="keep this many nodes by |value| (default 40)")
    p.add_argument("--edges", type=int, default=150, help="keep this many edges by |weight| (default 150)")
    p.add_argument("--keep-inputs", action="store_true", help="keep every input token as a node")
    p.add_argument("--prune", action="store_true", help="prune by influence (circuit-tracer's rule) instead of "
                                                        "top-N: keep the nodes / edges carrying --node-share / "
                                                        "--edge-share of the target's influence")
    p.add_argument("--node-share", type=float, default=0.8, help="with --prune: node influence share (0.8)")
    p.add_argument("--edge-share", type=float, default=0.98, help="with --prune: edge influence share (0.98)")
    p.add_argument("--pool", type=int, default=300, help="with --prune: candidates by |value| (default 300)")
    p.add_argument("--qk", action="store_true", help="QK attribution of the head nodes: token-token vs positional "
                                                     "share of why each head attended where it did")
    p.add_argument("--book", help="book to read unit labels from (and to --save into)")
    p.add_argument("--features", action="append", metavar="DICTIONARY",
                   help="replace the MLP of this transcoder's layer (a dictionary of --book: name or number; "
                        "repeatable, one per layer) by its active features plus one exact error node per position")
    p.add_argument("--save", metavar="NAME", help="save the graph in --book under NAME")
    p.add_argument("--overwrite", action="store_true", help="with --save: replace a saved graph of that name")
    p.add_argument("--json", help="write the graph as JSON here")
    p.add_argument("--svg", help="write the graph as SVG here")
    p.add_argument("--ablate", nargs="+", metavar="NODE", help="also ablate these node ids (e.g. head/0/9/14/13) "
                                                               "together and print the change")
    p.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablation mode (default zero)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..graph import ablate, attribute, to_json, to_svg

    if args.nodes < 1 or args.edges < 0:
        raise CircuitbookError("--nodes must be >= 1 and --edges >= 0")
    for opt, out in (("--json", args.json), ("--svg", args.svg)):
        if out:
            check_output_file(out, opt)
    labels = book = None
    if args.save and not args.book:
        raise CircuitbookError("--save needs --book, the book to save the graph in")
    if args.features and not args.book:
        raise CircuitbookError("--features needs --book, the book that holds the dictionary")
    if args.book:
        if not Path(args.book).is_file():
            raise CircuitbookError(f"book {args.book} does not exist")
        from ..book import Book

        book = Book.open(args.book, create=False, readonly=not args.save)
        labels = book.labelled()
        if args.save and not args.overwrite:
            from ..book.graphs import GraphNameError, saved_graphs

            if args.save in {r["name"] for r in saved_graphs(book)}:
                raise GraphNameError(f"a graph named {args.save!r} is already saved in {args.book}; "
                                     f"choose another name or pass --overwrite")
    stored = []
    if args.features:  # the dictionaries must exist before the model is loaded
        from ..dictionary.store import load_from_book

        stored = [load_from_book(book, which) for which in args.features]
    model = load(args)
    transcoders = None
    if stored:
        from ..dictionary.graph import graph_transcoder

        transcoders = [graph_transcoder(d, row["number"], row["name"], model.cfg) for d, row in stored]
    have = book.get_meta("model_fingerprint") if args.save else None
    if have is not None and have != model.fingerprint():
        from ..book import BookError

        raise BookError(f"{args.book} describes model {book.get_meta('model_source')!r} (fingerprint {have}), not "
                        f"{model.source!r} ({model.fingerprint()}): save the graph in that model's book")
    target = args.token_id if args.token_id is not None else args.token
    contrast = args.contrast_id if args.contrast_id is not None else args.contrast
    report = None
    if args.prune:
        from ..graph.prune import attribute_pruned

        g, report = attribute_pruned(model, args.prompt, target, pos=args.pos, contrast=contrast, pool=args.pool,
                                     node_share=args.node_share, edge_share=args.edge_share, labels=labels,
                                     transcoders=transcoders)
    else:
        g = attribute(model, args.prompt, target, pos=args.pos, contrast=contrast, max_nodes=args.nodes,
                      max_edges=args.edges, keep_inputs=args.keep_inputs, labels=labels, transcoders=transcoders)
    what = f"logit[{g.target_str!r}]" + (f" - logit[{g.contrast_str!r}]" if g.contrast is not None else "")
    print(f"{what} at position {g.pos} (after {g.token_strs[g.pos]!r}) = {g.logit:.4f}")
    print(f"{len(g.nodes) - 1} of {g.n_candidates} nodes, {len(g.edges)} edges; "
          f"direct constants {sum(g.constants.values()):+.4f}")
    if report is not None:
        print(report.summary())
    for t in transcoders or []:
        err = g.bias_flow.get(f"blocks.{t.layer}.transcoder.error", 0.0)
        n_feat = sum(1 for n in g.nodes if n.kind == "feature" and n.group == t.number)
        print(f"layer {t.layer} MLP -> transcoder {t.name!r} (dictionary {t.number}): {n_feat} feature nodes kept; "
              f"error nodes carry {err:+.4f} of the logit")
    print(f"{'node':24s} {'value':>9s} {'direct':>9s}  label")
    for n in sorted(g.nodes[:-1], key=lambda n: -abs(n.value))[:15]:
        print(f"{n.title:24s} {n.value:+9.4f} {n.direct:+9.4f}  {n.label or ''}")
    r = None
    if args.ablate:  # before writing anything: a bad node id is an error
        try:
            r = ablate(model, args.prompt, args.ablate, g.target, pos=g.pos, contrast=g.contrast, mode=args.mode)
        except CircuitbookError as e:
            raise CircuitbookError(f"--ablate {' '.join(args.ablate)}: {e}") from None
    if args.qk:
        from ..graph.qk import graph_qk

        heads = sorted((n for n in g.nodes if n.kind == "head"), key=lambda n: -abs(n.value))[:10]
        qk = graph_qk(model, dataclasses.replace(g, nodes=heads))
        print(f"{'head node (QK)':24s} {'score':>8s} {'vs avg':>8s}  token-token positional other")
        for n in heads:
            a = qk[n.id]
            sh = a.shares
            print(f"{n.title:24s} {a.score:+8.3f} {a.centred:+8.3f}  {sh['token_token']:11.2f} {sh['positional']:10.2f} "
                  f"{sh['other']:5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(g), indent=1))
        print(f"wrote {args.json}")
    if args.svg:
        Path(args.svg).write_text(to_svg(g))
        print(f"wrote {args.svg}")
    if args.save:
        from ..graph.saved import save

        save(book, args.save, g, args.prompt, model.fingerprint(), overwrite=args.overwrite,
             extra_settings={"pool": args.pool} if args.prune else None, model=model)
        print(f"saved graph {args.save!r} in {args.book}")
    if r is not None:
        print(f"ablating {', '.join(r.ablations)} ({r.mode}): {r.logit_before:.4f} -> {r.logit_after:.4f} "
              f"(delta {r.delta:+.4f}); now predicts " + ", ".join(f"{s!r} {p:.3f}" for _, s, p, _ in r.top_after))
    return 0
