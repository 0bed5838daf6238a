"""Dictionaries in the book: store one (weights as a SAELens-layout safetensors blob), load one back, and
record a measurement. The SQL is in ``book/dictionary.py``; this module converts to and from
:class:`Dictionary` and checks a dictionary against the model the book describes."""

from __future__ import annotations

from ..book import dictionary as bd
from .config import DictionaryConfig, DictionaryError
from .formats import load_saelens, tensors_from_bytes, tensors_to_bytes
from .model import Dictionary
from .splice import SpliceResult


def check_fits(d: Dictionary, cfg) -> None:
    """DictionaryError unless ``d`` reads/writes the model described by ``cfg`` (ModelConfig or the book's dict)."""
    get = (lambda k: cfg[k]) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
    d_model, n_layers = int(get("d_model")), int(get("n_layers"))
    if d.cfg.d_in != d_model or d.cfg.d_out != d_model:
        raise DictionaryError(f"the dictionary reads d_in={d.cfg.d_in} and writes d_out={d.cfg.d_out}, but the model's "
                              f"d_model is {d_model}")
    if not 0 <= d.cfg.layer < n_layers:
        raise DictionaryError(f"the dictionary is for layer {d.cfg.layer}, but the model has {n_layers} layer(s)")


def save_to_book(book, name: str, d: Dictionary, settings: dict | None = None, model=None, corpus: str | None = None,
                 replace: bool = False) -> int:
    """Store ``d`` under ``name``; returns its number (the ``layer`` slot of its features' addresses)."""
    if book.config is not None:
        check_fits(d, book.config)
    settings = {"dictionary": d.cfg.to_dict(), **(settings or {})}  # what load_from_book rebuilds it from
    return bd.save_dictionary(book, name, d.cfg.to_dict(), settings, weights=tensors_to_bytes(d.tensors()),
                              model_fingerprint=model.fingerprint() if model is not None else None, corpus=corpus,
                              replace=replace)


def load_from_book(book, which: str | int) -> tuple[Dictionary, dict]:
    """(Dictionary, its row) for the dictionary called / numbered ``which``."""
    row = bd.get_dictionary(book, which)
    cfg = DictionaryConfig.from_dict(row["settings"]["dictionary"])
    blob = bd.weights_blob(book, row["number"])
    if blob is not None:
        d = Dictionary.from_tensors(cfg, tensors_from_bytes(blob, f"dictionary {row['name']!r}"), f"dictionary {row['name']!r}")
    else:
        d = load_saelens(row["path"], cfg.layer)
    return d, row


def save_measurement(book, number: int, corpus: str, result: SpliceResult) -> int:
    r = result.reconstruction
    return bd.save_metrics(book, number, corpus, result.to_dict(), r.density.numpy(), r.hist)


def save_measured_to_book(book, name: str, d: Dictionary, settings: dict, model, corpus: str, measured_on: str,
                          result: SpliceResult, replace: bool = False) -> int:
    """Store ``d`` and its measurement in one transaction (see book.dictionary.save_measured_dictionary)."""
    if book.config is not None:
        check_fits(d, book.config)
    r = result.reconstruction
    number, _ = bd.save_measured_dictionary(book, name, d.cfg.to_dict(), settings, tensors_to_bytes(d.tensors()),
                                            (measured_on, result.to_dict(), r.density.numpy(), r.hist),
                                            model_fingerprint=model.fingerprint(), corpus=corpus, replace=replace)
    return number
