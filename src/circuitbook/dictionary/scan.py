"""Dictionary features in the scan: a stored dictionary as a :class:`circuitbook.scan.run.UnitSource`.

    sources = feature_sources(model, book, ["transcoder-L0-16384"])
    scan_corpus(model, corpus, book, sources=sources)        # what `circuitbook scan --features NAME` does

A feature's activation on a token is the dictionary's encoding of what it reads there, computed from the
scan's own forward (no second pass): a transcoder or skip-transcoder reads the MLP's input (layer L's ln2
applied to ``blocks.L.hook_resid_mid``, ``model.forward.mlp_input``), an SAE the MLP's output
(``blocks.L.hook_mlp_out``) — the same inputs :func:`dictionary.activations.layer_io` trains on. Units are
``feature/<dictionary number>/<idx>``; the source's identity is the dictionary's number, name and a digest
of its weights, so a scan resumed or merged with another dictionary under the same name is refused.
"""

from __future__ import annotations

import hashlib

import torch

from ..model.forward import mlp_input
from ..scan.run import UnitSource
from .config import DictionaryError
from .model import Dictionary
from .store import check_fits, load_from_book


def dictionary_taps(d: Dictionary) -> tuple[str, ...]:
    L = d.cfg.layer
    return (f"blocks.{L}.hook_mlp_out",) if d.cfg.kind == "sae" else (f"blocks.{L}.hook_resid_mid",)


def weights_digest(d: Dictionary) -> str:
    h = hashlib.sha256()
    for name, t in sorted(d.tensors().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_source(model, d: Dictionary, number: int, name: str) -> UnitSource:
    """The features of dictionary ``number`` (``d``) as a scan source on ``model``."""
    check_fits(d, model.cfg)
    weights = model.weights
    L = d.cfg.layer
    tap = dictionary_taps(d)[0]
    enc = d.to(weights.W_E.device)

    @torch.no_grad()
    def acts(out: dict) -> torch.Tensor:
        x = out[tap] if d.cfg.kind == "sae" else mlp_input(weights, L, out[tap])
        return enc.encode(x.float())

    return UnitSource("feature", int(number), int(d.cfg.d_sae), dictionary_taps(d), acts,
                      {"dictionary": name, "weights": weights_digest(d)})


def feature_sources(model, book, names: list[str | int]) -> tuple[UnitSource, ...]:
    """Scan sources for the book's dictionaries named (or numbered) ``names``; "all" means every one.
    BookError / DictionaryError (naming it) for a missing dictionary or one that does not fit the model."""
    from ..book import dictionary as bd

    if any(str(n) == "all" for n in names):
        names = [r["number"] for r in bd.dictionaries(book)]
        if not names:
            raise DictionaryError(f"{book.path} has no dictionaries (circuitbook dictionary train / import)")
    out, seen = [], set()
    for which in names:
        d, row = load_from_book(book, which)
        if row["number"] in seen:
            continue
        seen.add(row["number"])
        out.append(feature_source(model, d, row["number"], row["name"]))
    return tuple(out)
