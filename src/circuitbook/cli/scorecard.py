"""``circuitbook scorecard BOOK --corpus HELD_OUT``: splice every explanation in at once (explained units
simulated, the rest mean-ablated) and report the loss recovered, with its breakdown and curve; stored."""

from __future__ import annotations


def register(sub) -> None:
    from .score import add_scoring_args

    p = sub.add_parser("scorecard", help="how much of the model's loss do the book's explanations recover, together",
                       description=__doc__.splitlines()[0])
    add_scoring_args(p)
    p.add_argument("--curve-points", type=int, default=8, help="points on the units-vs-recovered curve (default 8)")
    p.add_argument("--json", action="store_true", help="print the scorecard as JSON")
    p.add_argument("--kind", default="neuron", choices=("neuron", "feature"),
                   help="whose explanations: the MLP's neurons (default) or the book's dictionary features "
                        "(explained features simulated, the others mean-ablated, the dictionary's error term kept)")
    p.set_defaults(func=main, writes=("book",))


def main(args) -> int:
    import json

    from ..corpus import corpus_hash
    from ..explain.score import ScoreSettings
    from ..explain.scorecard import scorecard
    from ..explain.score import ScoreError
    from .explain import book_model, open_book
    from .score import check_scoring_args, held_out_stories

    if args.curve_points < 1:
        raise ScoreError(f"--curve-points {args.curve_points}: need at least 1")
    check_scoring_args(args)
    from ..dictionary.access import register_feature_access

    book = open_book(args.book)
    held = held_out_stories(args, book)
    model = book_model(args, book)
    if args.kind == "feature" and not register_feature_access(model, book):
        raise ScoreError(f"{args.book} has no dictionaries: --kind feature needs one (circuitbook dictionary train)")
    st = ScoreSettings(window=args.window, max_len=args.max_len, batch_size=args.batch_size)
    card = scorecard(book, model, held, st, args.curve_points,
                     corpus=f"{args.corpus}#{corpus_hash(args.corpus)}", progress=True, kind=args.kind)
    print(json.dumps(card.to_dict(), indent=1) if args.json else card.summary())
    return 0
