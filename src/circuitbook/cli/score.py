"""``circuitbook score BOOK --corpus HELD_OUT``: score every explanation of the book on held-out stories
(simulation correlation, detection balanced accuracy, ablation loss recovered) and store the scores."""

from __future__ import annotations

from ._common import add_model_args, add_scale_args, executor_options


def add_scoring_args(p) -> None:
    p.add_argument("book", help="a book with explanations (circuitbook explain)")
    p.add_argument("--corpus", required=True, help="held-out stories (never those the book's scan read)")
    p.add_argument("--model", help="model directory or hub id (default: the book's model)")
    p.add_argument("--stories", type=int, default=None, help="use only the first N stories")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=int, default=64, help="tokens per scoring window (default 64)")
    add_model_args(p, required=False)


def stories(args) -> list[str]:
    from itertools import islice

    from ..corpus import read_stories

    return list(islice(read_stories(args.corpus), args.stories))


def check_scoring_args(args) -> None:
    """Refuse the options score and scorecard share, and a corpus that is not readable stories, before the book
    is opened or the model loaded."""
    from ..explain.score import ScoreError
    from ._common import check_corpus_arg

    for opt, v, least in (("--stories", args.stories, 1), ("--max-len", args.max_len, 2),
                          ("--batch-size", args.batch_size, 1), ("--window", args.window, 1)):
        if v is not None and v < least:
            raise ScoreError(f"{opt} {v}: need at least {least}")
    check_corpus_arg(args)


def held_out_stories(args, book) -> list[str]:
    """The --corpus stories, refused (naming the file) when the book's scan read any of them."""
    from ..explain.score import ScoreError, check_held_out

    st = stories(args)
    try:
        check_held_out(book, st)
    except ScoreError as e:
        raise ScoreError(f"--corpus {args.corpus}: {e}") from None
    return st


def register(sub) -> None:
    p = sub.add_parser("score", help="score every explanation of a book on held-out stories",
                       description=__doc__.splitlines()[0])
    add_scoring_args(p)
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation scores")
    p.add_argument("--ablation-tokens", type=int, default=512, help="positions the ablation scores use (default 512)")
    p.add_argument("--kind", action="append", help="only units of this kind (repeatable)")
    p.add_argument("--checkpoint-every", type=int, default=64, metavar="N",
                   help="journal finished scores in the book every N units (default 64): a killed run re-run with "
                        "the same arguments scores only what is left")
    add_scale_args(p, "score the explanations in N shard jobs on an executor (shard i scores explanations i, i+n, "
                   "...), retry failed shards and store one score run (the same scores as one process); finished "
                   "shards wait in BOOK.score-shards/ and a re-run reuses them (see circuitbook/scale/score.py)")
    p.set_defaults(func=main, writes=("book",))


def main(args) -> int:
    from ..corpus import corpus_hash
    from ..explain.run import score_book
    from ..explain.score import ScoreError, ScoreSettings
    from ._common import check_scale_args
    from .explain import book_model, check_kinds, open_book

    if args.checkpoint_every < 1:
        raise ScoreError(f"--checkpoint-every {args.checkpoint_every}: need at least 1 unit")
    if args.ablation_tokens < 1:
        raise ScoreError(f"--ablation-tokens {args.ablation_tokens}: need at least 1 (or --no-ablation)")
    check_scoring_args(args)
    check_scale_args(args)
    check_kinds(args.kind)
    from ..dictionary.access import register_feature_access

    book = open_book(args.book)
    held = held_out_stories(args, book)
    model = book_model(args, book)
    register_feature_access(model, book)  # the book's dictionary features become scorable
    st = ScoreSettings(window=args.window, max_len=args.max_len, batch_size=args.batch_size,
                       ablation=not args.no_ablation, ablation_tokens=args.ablation_tokens)
    label = f"{args.corpus}#{corpus_hash(args.corpus)}"
    if args.shards is not None or args.executor is not None:
        from ..scale.score import scale_score

        r, info = scale_score(book, model, {"model": args.model, "dtype": args.dtype, "device": args.device},
                              args.corpus, st, shards=args.shards or 2, executor=args.executor or "local",
                              retries=args.retries, opts=executor_options(args), n_stories=args.stories,
                              kinds=args.kind, corpus_label=label, encoding=getattr(args, "encoding", None))
        for line in info["failures"]:
            print(f"retried: {line}")
        print(f"{info['shards']} shards on {args.executor or 'local'}: {info['reused']} reused, {info['jobs']} jobs run")
    else:
        r = score_book(book, model, held, st, kinds=args.kind, corpus=label, progress=True,
                       checkpoint_every=args.checkpoint_every)
    print(r.summary())
    if not r.held_out.get("checked"):
        print("warning: " + r.held_out["reason"])
    return 0
