"""``circuitbook handcraft SPEC --model MODEL --corpus PATH [--book BOOK.db]``: build a spec into the model,
evaluate it against the original and its ablation baselines, print the figures and store them.

A spec that names dictionary features (``replaces: {feature: ...}``, ``{direction: {feature: ...}}``) reads
those dictionaries from ``--book`` (``circuitbook.dictionary.handcraft``); the error-term setting
(``dictionary_error``, default keep) is printed with the figures and stored with them."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CircuitbookError
from ._common import add_encoding_arg, add_model_args, check_corpus_arg, load


def register(sub) -> None:
    p = sub.add_parser("handcraft", help="build a handcrafted spec into a model and measure the loss it recovers",
                       description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="spec file (.yaml/.json; see docs/handcraft-spec.md)")
    p.add_argument("--from-book", action="store_true",
                   help="build the book's structured explanations (circuitbook explain) instead of a spec file")
    p.add_argument("--model", help="model directory or hub id (default: the book's model)")
    p.add_argument("--corpus", required=True, help="stories (TinyStories .txt, text, .jsonl, hf:NAME)")
    p.add_argument("--book", help="book file: reads token classes, stores the evaluation")
    p.add_argument("--classes", help="JSON file {class name: [token ids]} (overrides the book's classes)")
    p.add_argument("--stories", type=int, default=None, help="use only the first N stories")
    p.add_argument("--fit-fraction", type=float, default=0.2,
                   help="fraction of stories used to fit the spec and the ablation means (rest: evaluation)")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--save-model", help="also write the handcrafted model as an HF checkpoint here")
    p.add_argument("--json", action="store_true", help="print the full evaluation as JSON")
    add_model_args(p, required=False)
    add_encoding_arg(p)
    p.set_defaults(func=main, writes=("book",))


def check_spec_file(path: str) -> None:
    """The spec file exists and is UTF-8 text (load_spec reports everything about its content)."""
    p = Path(path)
    if p.is_file():
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CircuitbookError(f"spec {p} is not valid UTF-8: byte offset {e.start:,} ({e.reason})") from None


def check_numbers(args) -> None:
    """The numeric options handcraft and coverage share."""
    if getattr(args, "stories", None) is not None and args.stories < 1:
        raise CircuitbookError(f"--stories must be at least 1, got {args.stories}")
    if args.max_len < 2 or args.batch_size < 1:
        raise CircuitbookError(f"--max-len must be >= 2 and --batch-size >= 1 (got {args.max_len}, {args.batch_size})")


def check_same_model(book, model) -> None:
    """Refuse (before any work) a book that describes another model, as ``bind_model`` would after it."""
    from ..book import BookError

    have = book.get_meta("model_fingerprint")
    if have is not None and have != model.fingerprint():
        raise BookError(f"{book.path} describes model {book.get_meta('model_source')!r} (fingerprint {have}), "
                        f"not {model.source!r} ({model.fingerprint()}); use another book")


def model_and_book(args, must_exist: bool = False):
    """(model, the book opened read-only, or None when --book is not given or not there yet)."""
    from ..book import Book

    book = None
    if getattr(args, "book", None) and (must_exist or Book.check(args.book)):
        book = Book.open(args.book, create=False, readonly=True)
    if not args.model:
        src = book.get_meta("model_source") if book is not None else None
        if not src:
            raise CircuitbookError("give --model (the book records no model source)")
        args.model = src
    return load(args), book


def read_classes(args, book) -> dict:
    from ..handcraft import token_classes_from_book

    if args.classes:
        try:
            data = json.loads(Path(args.classes).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CircuitbookError(f"--classes {args.classes}: cannot read a JSON object ({e})") from None
        if not isinstance(data, dict):
            raise CircuitbookError(f"--classes {args.classes}: expected {{class name: [token ids]}}")
        return {str(k): [int(i) for i in v] for k, v in data.items()}
    return token_classes_from_book(book) if book is not None else {}


def stories_of(args, need: int = 2) -> list[str]:
    from itertools import islice

    from ..corpus import CorpusError, read_stories

    stories = list(islice(read_stories(args.corpus), args.stories))
    if len(stories) < need:
        raise CorpusError(f"{args.corpus}: need at least {need} stories" +
                          (" (one to fit, one to evaluate)" if need == 2 else ""))
    return stories


def spec_dictionaries(spec, book, model) -> dict:
    """{name: FeatureDictionary} for the dictionaries ``spec`` names, read from ``book`` and checked against
    ``model`` (BookError for one the book does not have, DictionaryError for one that does not fit)."""
    from ..dictionary.handcraft import book_feature_dictionaries

    names = spec.dictionary_names()
    if not names:
        return {}
    if book is None:
        raise CircuitbookError(f"the spec names dictionary features ({', '.join(names)}), but the book does not "
                               f"exist yet: it holds no dictionaries")
    return book_feature_dictionaries(book, names, model.cfg, model.weights.W_E.device)


def _run_key(spec, model, corpus: str, classes: dict, args, dictionaries: dict | None = None) -> str:
    """What this evaluation is: a re-run of the same (spec, model, corpus, classes, settings) replaces it."""
    import hashlib

    what = {"spec": spec.text or spec.to_yaml(), "model": model.fingerprint(), "corpus": corpus.split("#")[-1],
            "classes": classes, "stories": args.stories, "fit_fraction": args.fit_fraction, "max_len": args.max_len,
            "batch_size": args.batch_size, "dtype": args.dtype,
            "dictionaries": {k: [fd.number, fd.name] for k, fd in (dictionaries or {}).items()}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def main(args) -> int:
    from ..corpus import corpus_hash
    from ..handcraft import FeatureRef, evaluate_spec, load_spec, save_checkpoint
    from ..handcraft.evaluate import store

    from ..book import Book

    check_numbers(args)
    if args.from_book and not args.book:
        raise CircuitbookError("--from-book needs --book")
    if not args.from_book and not args.spec:
        raise CircuitbookError("give a spec file, or --from-book with --book")
    if not 0 < args.fit_fraction < 1:
        raise CircuitbookError("--fit-fraction must be between 0 and 1")
    if not args.from_book:
        check_spec_file(args.spec)
        spec = load_spec(Path(args.spec))
    check_corpus_arg(args, min_stories=2)
    if args.book:
        Book.check(args.book)
    if args.save_model and Path(args.save_model).exists() and not Path(args.save_model).is_dir():
        raise CircuitbookError(f"--save-model {args.save_model} is a file, not a directory")
    if not args.from_book and spec.dictionary_names() and not args.book:
        raise CircuitbookError(f"{args.spec} names dictionary features ({', '.join(spec.dictionary_names())}): "
                               f"give --book, the book that holds the dictionaries")
    if args.save_model and not args.from_book and any(isinstance(n.replaces, FeatureRef) for n in spec.neurons):
        raise CircuitbookError("--save-model: a spec that replaces dictionary features runs with the dictionary "
                               "spliced in place of an MLP, which no checkpoint holds")
    model, book = model_and_book(args)  # the book read-only: nothing is written before the evaluation is done
    if book is not None:
        check_same_model(book, model)
    if args.from_book:
        from ..explain.to_spec import spec_from_explanations

        spec = spec_from_explanations(book)
        if not spec.neurons and not spec.heads:
            raise CircuitbookError(f"{book.path} has no explanations that build (run circuitbook explain)")
    dictionaries = spec_dictionaries(spec, book, model)
    classes = read_classes(args, book)
    stories = stories_of(args)
    n_fit = max(1, min(len(stories) - 1, round(len(stories) * args.fit_fraction)))
    r = evaluate_spec(spec, model, stories[:n_fit], stories[n_fit:], classes, args.max_len, args.batch_size,
                      progress=True, fit_progress=False, dictionaries=dictionaries)
    print(f"spec {spec.name!r}: {len(r.built.replaced)} replaced, {len(r.built.added)} added, "
          f"{len(r.built.removed)} units removed in the baselines; fitted on {n_fit} stories, "
          f"evaluated on {len(stories) - n_fit}")
    print(json.dumps(r.evaluation.to_dict(), indent=1) if args.json else r.evaluation.summary())
    if args.save_model:
        out = save_checkpoint(r.built.weights, model, args.save_model)
        print(f"handcrafted model written to {out}")
    if args.book:
        book = Book.open(args.book)
        book.bind_model(model)
        corpus = f"{args.corpus}#{corpus_hash(args.corpus)}"
        eid = store(book, r, model, corpus, run_key=_run_key(spec, model, corpus, classes, args, dictionaries))
        print(f"stored as evaluation {eid} in {book.path}")
    return 0
