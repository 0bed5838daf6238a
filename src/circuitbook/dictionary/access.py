"""How the explanation scorer reads dictionary features (``explain.access.Access`` for the ``feature`` kind).

A feature's activation is computed from the forward's taps as the scan computes it (``dictionary.scan``:
the dictionary's encoding of the MLP input, or of the MLP output for an SAE). Its write is
``activation x W_dec[idx]`` added to its layer's MLP output, so for a dictionary of the last layer the
scorer's exact fast path applies (``explain.score.fast_path``): replacing the feature's activation by its
mean or its simulation changes the residual by ``delta x W_dec[idx]``, everything else (the other features,
the dictionary's error term, i.e. the MLP's true output) kept. Dictionaries of earlier layers get
simulation and detection scores only (no splice through the forward is registered: ``replace`` is None).

    register_feature_access(model, book)     # what `circuitbook score` does before scoring a book
"""

from __future__ import annotations

import torch

from ..explain.access import Access, register_access
from ..model.forward import mlp_input
from .scan import dictionary_taps
from .store import check_fits, load_from_book


def feature_access(model, book) -> Access | None:
    """The feature Access for ``book``'s dictionaries on ``model`` (None when the book has none)."""
    from ..book import dictionary as bd

    rows = bd.dictionaries(book)
    if not rows:
        return None
    dicts = {}
    for r in rows:
        d, _ = load_from_book(book, r["number"])
        check_fits(d, model.cfg)
        dicts[r["number"]] = d.to(model.weights.W_E.device)
    weights = model.weights

    def get(number: int):
        if number not in dicts:
            raise KeyError(f"the book has no dictionary {number}")
        return dicts[number]

    @torch.no_grad()
    def acts(out: dict, number: int) -> torch.Tensor:
        d = get(number)
        tap = dictionary_taps(d)[0]
        x = out[tap] if d.cfg.kind == "sae" else mlp_input(weights, d.cfg.layer, out[tap])
        return d.encode(x.float())

    return Access(read_tap=lambda number: dictionary_taps(get(number))[0], read=None, replace=None, acts=acts,
                  taps=lambda number: list(dictionary_taps(get(number))),
                  write_row=lambda number, idx: get(number).W_dec[idx].detach().float(),
                  write_layer=lambda number: get(number).cfg.layer,
                  write_tap=lambda number: f"blocks.{get(number).cfg.layer}.hook_mlp_out")


def register_feature_access(model, book) -> bool:
    """Let the scorer read ``book``'s features on ``model``; False (nothing registered) without dictionaries."""
    a = feature_access(model, book)
    if a is None:
        return False
    register_access("feature", a)
    return True
