"""Transcoders of the book for attribution graphs: a stored dictionary as a ``graph.replacement.Transcoder``.

``circuitbook graph MODEL PROMPT --book B --features NAME`` (and the web prompt page) replace the MLP of the
dictionary's layer by its features plus one exact error node per position (``graph/attribution.py``
documents the maths and the conservation sums). The graph stage does not import this one (it sits to its
left in ``docs/architecture.md``); this module converts.

Refused, each with one line (``DictionaryError`` / ``BookError``, exit 2 in the CLI): a dictionary the book
does not have; one whose d_in / d_out or layer does not fit the model; an SAE (it reads the MLP's output,
so it cannot stand in for the MLP); a skip-transcoder (its dense skip is no set of feature nodes; not
supported in graphs yet).
"""

from __future__ import annotations

from ..graph.replacement import Transcoder
from .config import DictionaryError
from .model import Dictionary
from .store import check_fits, load_from_book


def graph_transcoder(d: Dictionary, number: int, name: str, cfg=None) -> Transcoder:
    """The graph's view of transcoder ``d`` (numbered ``number`` in its book), checked against ``cfg``."""
    if d.cfg.kind == "sae":
        raise DictionaryError(f"dictionary {name!r} is an SAE (it reconstructs the MLP output): an attribution "
                              f"graph needs a transcoder, which reads the MLP's input and replaces it")
    if d.cfg.kind != "transcoder":
        raise DictionaryError(f"dictionary {name!r} is a {d.cfg.kind}: attribution graphs take plain transcoders "
                              f"(a skip-transcoder's dense skip is not a set of feature nodes)")
    if cfg is not None:
        check_fits(d, cfg)
    t = {k: v for k, v in d.tensors().items()}
    return Transcoder(layer=d.cfg.layer, number=int(number), name=name, W_enc=t["W_enc"], b_enc=t["b_enc"],
                      W_dec=t["W_dec"], b_dec=t["b_dec"], activate=_activation(d))


def _activation(d: Dictionary):
    d = Dictionary.from_tensors(d.cfg, d.tensors())  # a private float32 copy: the graph never moves the caller's

    def activate(pre):
        return d.to(pre.device).activate(pre.float())

    return activate


def book_transcoders(book, names, cfg) -> list[Transcoder]:
    """The transcoders called / numbered ``names`` in ``book``, checked against the model config ``cfg``."""
    out = []
    for which in names:
        d, row = load_from_book(book, which)
        out.append(graph_transcoder(d, row["number"], row["name"], cfg))
    return out
