"""circuitbook dictionary train|eval|export|import: transcoders and SAEs whose features become units.

    circuitbook dictionary train MODEL --corpus F --book B --kind transcoder --layer 0 --features 16384 --k 32
    circuitbook dictionary eval MODEL --book B --name NAME --corpus F [--holdout 100]
    circuitbook dictionary export --book B --name NAME --out DIR            (SAELens 6 format)
    circuitbook dictionary import MODEL --book B --path P --format saelens|circuit-tracer|sparsify [--layer L]
"""

from __future__ import annotations

from ..errors import CircuitbookError
from ._common import add_model_args, load


def register(sub) -> None:
    p = sub.add_parser("dictionary", help="train / evaluate / import / export transcoders and SAEs (features as units)",
                       description=__doc__)
    dsub = p.add_subparsers(dest="action", metavar="ACTION")

    t = dsub.add_parser("train", help="train a dictionary on a corpus into the book, then measure it")
    add_model_args(t)
    t.add_argument("--corpus", required=True, help="stories (TinyStories .txt, plain text, .jsonl)")
    t.add_argument("--book", required=True, help="book file (created if missing)")
    t.add_argument("--kind", default="transcoder", choices=["transcoder", "skip-transcoder", "sae"])
    t.add_argument("--layer", type=int, default=0, help="the model layer whose MLP it reads (default 0)")
    t.add_argument("--features", type=int, default=None, help="dictionary width (default 8 x d_mlp)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--k", type=int, default=None, help="TopK: active features per token (default 32, at most --features)")
    g.add_argument("--l1", type=float, default=None, help="ReLU + L1 instead of TopK, with this L1 coefficient")
    t.add_argument("--name", default=None, help="the dictionary's name in the book (default KIND-L<layer>-<features>)")
    t.add_argument("--holdout", type=int, default=100, help="last stories kept out of training and measured on "
                   "(default 100; 0: measure on the last trained-on stories)")
    t.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (default 2M; the corpus repeats)")
    t.add_argument("--batch-size", type=int, default=4096, help="activation rows per step (default 4096)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 2e-4/sqrt(features/16384))")
    t.add_argument("--warmup-steps", type=int, default=20, help="learning-rate warm-up steps (default 20)")
    t.add_argument("--dead-tokens", type=int, default=200_000, help="tokens without firing before a feature counts "
                   "as dead and enters AuxK (default 200000)")
    t.add_argument("--resample-every", type=int, default=0, help="resample under-used features every N steps in the "
                   "first half of training (default 0: off)")
    t.add_argument("--train-dtype", default="fp32", choices=["fp32", "bf16"], help="activation / encoder precision")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    t.add_argument("--overwrite", action="store_true", help="replace a dictionary of the same name / another model's book")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train, writes=("book",))

    e = dsub.add_parser("eval", help="measure a stored dictionary: L0, FVU, densities, spliced CE / KL / loss recovered")
    add_model_args(e)
    e.add_argument("--book", required=True)
    e.add_argument("--name", required=True, help="dictionary name or number")
    e.add_argument("--corpus", required=True)
    e.add_argument("--holdout", type=int, default=100, help="measure on the last N stories (default 100)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_eval, writes=("book",))

    x = dsub.add_parser("export", help="write a stored dictionary in SAELens 6 format (cfg.json + sae_weights.safetensors)")
    x.add_argument("--book", required=True)
    x.add_argument("--name", required=True, help="dictionary name or number")
    x.add_argument("--out", required=True, help="output directory")
    x.set_defaults(func=run_export)

    i = dsub.add_parser("import", help="store a SAELens, circuit-tracer or sparsify dictionary in the book")
    add_model_args(i)
    i.add_argument("--book", required=True)
    i.add_argument("--path", required=True, help="SAELens / sparsify directory or circuit-tracer .safetensors file")
    i.add_argument("--format", default="saelens", choices=["saelens", "circuit-tracer", "sparsify"])
    i.add_argument("--layer", type=int, default=None, help="model layer (SAELens files usually say it)")
    i.add_argument("--name", default=None, help="name in the book (default: the file's name)")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(func=run_import, writes=("book",))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args) -> int:
    from ..dictionary import DictionaryConfig, TrainConfig
    from ..dictionary.run import train_into_book

    if args.features is not None and args.features < 1:
        raise CircuitbookError(f"--features {args.features}: need at least 1")
    if args.k is not None and not 1 <= args.k <= (args.features or args.k):
        raise CircuitbookError(f"--k {args.k}: need 1 <= k <= d_sae (--features {args.features})" if args.features
                               else f"--k {args.k}: need at least 1")
    model = load(args)
    d_model = model.cfg.d_model
    features = args.features if args.features is not None else 8 * model.cfg.d_mlp
    act = "relu" if args.l1 is not None else "topk"
    k = (args.k if args.k is not None else min(32, features)) if act == "topk" else None
    dcfg = DictionaryConfig(args.kind, args.layer, d_model, features, act, k=k)
    tcfg = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, dtype=args.train_dtype, seed=args.seed,
                       warmup_steps=args.warmup_steps, dead_tokens=args.dead_tokens, resample_every=args.resample_every,
                       checkpoint_every=args.checkpoint_every, **({"l1_coeff": args.l1} if args.l1 is not None else {}))
    number, res, ev = train_into_book(model, args.corpus, args.book, dcfg, tcfg, args.name, args.holdout,
                                      args.overwrite, progress=not args.no_progress)
    print(f"dictionary {number} ({dcfg.kind}, {dcfg.d_sae} features, {act}) trained: {res.steps} steps, "
          f"{res.tokens} tokens, {res.tokens_per_s:.0f} tokens/s")
    print(ev.summary())
    print(f"its features are units feature/{number}/0 .. feature/{number}/{dcfg.d_sae - 1} in {args.book}")
    return 0


def run_eval(args) -> int:
    from ..dictionary.run import evaluate_in_book

    model = load(args)
    print(evaluate_in_book(model, args.book, args.name, args.corpus, args.holdout, progress=not args.no_progress).summary())
    return 0


def run_export(args) -> int:
    from ..dictionary.run import export_from_book

    print(f"wrote {export_from_book(args.book, args.name, args.out)} (SAELens 6: cfg.json + sae_weights.safetensors)")
    return 0


def run_import(args) -> int:
    from ..dictionary.run import import_into_book

    model = load(args)
    number, d = import_into_book(model, args.book, args.path, args.format, args.layer, args.name, args.overwrite)
    print(f"stored as dictionary {number}: {d.cfg.kind} ({d.cfg.activation}), layer {d.cfg.layer}, {d.cfg.d_sae} features")
    return 0
