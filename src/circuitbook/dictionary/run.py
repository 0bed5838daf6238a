"""The stage end to end: train a dictionary on a corpus into the book, measure it, import / export files.

``train_into_book`` trains on the corpus's stories except the last ``holdout`` (read lazily, epoch after
epoch), measures it on the held-out stories (or, with holdout 0, on the last stories it trained on) and
stores the dictionary with its measurement in one transaction. Its checkpoint sits next to the book
(``BOOK.dictionary-NAME.pt``) while it trains: run the same command again after a kill to resume.
Every argument is checked before the book is touched, so bad input writes nothing.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from ..corpus import corpus_hash, read_stories
from .config import DictionaryConfig, DictionaryError, TrainConfig
from .formats import load_dictionary, save_saelens
from .model import Dictionary
from .splice import SpliceResult, evaluate_splice
from .store import check_fits, load_from_book, save_measured_to_book, save_measurement, save_to_book
from .trainer import TrainResult, train


def split_corpus(corpus, holdout: int) -> tuple[int, object, list[str]]:
    """(number of training stories, a callable re-reading them, the held-out stories)."""
    n = sum(1 for _ in read_stories(corpus))
    if n == 0:
        raise DictionaryError(f"corpus {corpus} holds no stories")
    if not 0 <= holdout < n:
        raise DictionaryError(f"--holdout {holdout}: the corpus has {n} stories (need 0 <= holdout < {n})")
    n_train = n - holdout
    held = list(islice(read_stories(corpus), n_train, None)) if holdout else []
    return n_train, (lambda: islice(read_stories(corpus), n_train)), held


def _open_book(path, model, overwrite: bool):
    from ..book import Book

    book = Book.open(path)
    book.bind_model(model, overwrite=overwrite)
    return book


def measure(model, book, number: int, d: Dictionary, eval_stories: list[str], corpus_label: str,
            mean_stories=None, progress: bool = True) -> SpliceResult:
    res = evaluate_splice(model, d, eval_stories, mean_stories=mean_stories, progress=progress)
    save_measurement(book, number, corpus_label, res)
    return res


_SAME_RUN = ("dictionary", "training", "corpus_hash", "train_stories", "holdout")


def _finished_earlier(book, name: str, ckpt: Path, settings: dict) -> dict | None:
    """The stored row of ``name`` when a previous run of these very settings stored it but was killed before
    removing its checkpoint (the checkpoint is still there): that run is finished, not a name clash."""
    from ..book import dictionary as bd

    if not ckpt.exists():
        return None
    row = next((r for r in bd.dictionaries(book) if r["name"] == name), None)
    if row is None or any(row["settings"].get(k) != settings[k] for k in _SAME_RUN):
        return None
    return row


def train_into_book(model, corpus, book_path, dcfg: DictionaryConfig, tcfg: TrainConfig, name: str | None = None,
                    holdout: int = 0, overwrite: bool = False, progress: bool = True,
                    eval_stories: int = 100) -> tuple[int, TrainResult, SpliceResult]:
    """Train, measure, then store the dictionary and its measurement in one transaction and remove the
    checkpoint. Re-run after a kill at any point: training resumes from the checkpoint (a finished one is
    only measured and stored); a run killed after storing but before removing the checkpoint is finished
    by removing it."""
    check_fits(_shape_only(dcfg), model.cfg)
    name = name or f"{dcfg.kind}-L{dcfg.layer}-{dcfg.d_sae}"
    n_train, train_stories, held = split_corpus(corpus, holdout)
    chash = corpus_hash(corpus)
    book = _open_book(book_path, model, overwrite)
    from ..book import dictionary as bd

    ckpt = Path(str(book_path) + f".dictionary-{name}.pt")
    settings = {"dictionary": dcfg.to_dict(), "training": tcfg.to_dict(), "corpus": str(corpus), "corpus_hash": chash,
                "train_stories": n_train, "holdout": holdout}
    done = _finished_earlier(book, name, ckpt, settings)
    if not overwrite and done is None and any(r["name"] == name for r in bd.dictionaries(book)):
        raise DictionaryError(f"{book_path} already has a dictionary named {name!r}; use another --name or --overwrite")
    identity = {"model": model.fingerprint(), "corpus": chash, "train_stories": n_train}
    res = train(model, train_stories, dcfg, tcfg, checkpoint=ckpt, identity=identity, progress=progress)
    if not held:
        held = list(islice(train_stories(), max(0, n_train - eval_stories), None))
    label = f"{corpus}#{chash} last {len(held)} stories" + (" (held out)" if holdout else " (trained on)")
    # the measurement (a killed run that already stored dictionary and measurement is measured again for the
    # returned figures only: nothing is stored twice)
    ev = evaluate_splice(model, res.dictionary, held, mean_stories=list(islice(train_stories(), 400)),
                         progress=progress)
    if done is not None:
        number = done["number"]
    else:
        settings["trained"] = res.summary()
        number = save_measured_to_book(book, name, res.dictionary, settings, model, f"{corpus}#{chash}", label, ev,
                                       replace=overwrite)
    ckpt.unlink(missing_ok=True)
    return number, res, ev


class _shape_only:
    """Just enough of a Dictionary for :func:`check_fits` before anything is built."""

    def __init__(self, cfg: DictionaryConfig):
        self.cfg = cfg


def import_into_book(model, book_path, path, fmt: str, layer: int | None, name: str | None,
                     overwrite: bool = False) -> tuple[int, Dictionary]:
    """Load a dictionary file, check it fits the model, store it; returns (number, dictionary)."""
    d = load_dictionary(path, fmt, layer)
    check_fits(d, model.cfg)
    name = name or Path(path).stem
    book = _open_book(book_path, model, overwrite)
    settings = {"dictionary": d.cfg.to_dict(), "imported": {"path": str(path), "format": fmt}}
    return save_to_book(book, name, d, settings, model, replace=overwrite), d


def evaluate_in_book(model, book_path, which, corpus, holdout: int = 100, progress: bool = True) -> SpliceResult:
    """Measure a stored dictionary on the last ``holdout`` stories of ``corpus`` (mean ablation from the rest)."""
    from ..book import Book, BookError

    if not Path(book_path).is_file():
        raise DictionaryError(f"no book at {book_path}")
    book = Book.open(book_path, create=False)
    fp = book.get_meta("model_fingerprint")
    if fp is not None and fp != model.fingerprint():
        raise BookError(f"{book_path} describes another model ({book.get_meta('model_source')!r})")
    d, row = load_from_book(book, which)
    check_fits(d, model.cfg)
    n_train, rest, held = split_corpus(corpus, holdout)
    if not held:
        held = list(islice(rest(), max(0, n_train - 100), None))
    label = f"{corpus}#{corpus_hash(corpus)} last {len(held)} stories"
    return measure(model, book, row["number"], d, held, label, mean_stories=list(islice(rest(), 400)),
                   progress=progress)


def export_from_book(book_path, which, out_dir, model_name: str = "") -> Path:
    from ..book import Book

    if not Path(book_path).is_file():
        raise DictionaryError(f"no book at {book_path}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DictionaryError(f"--out {out_dir} is a file, not a directory (a SAELens dictionary is a directory)")
    book = Book.open(book_path, create=False, readonly=True)
    d, _ = load_from_book(book, which)
    return save_saelens(d, out_dir, model_name or (book.get_meta("model_source") or ""))
