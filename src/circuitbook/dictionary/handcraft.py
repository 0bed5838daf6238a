"""Dictionaries of the book for handcraft: a stored dictionary as a ``handcraft.features.FeatureDictionary``.

``circuitbook handcraft SPEC --book B`` (a spec naming features: ``replaces: {feature: ...}`` or
``{direction: {feature: ...}}``) and ``circuitbook coverage --book B --features NAME`` load the dictionaries
they need here. The handcraft stage does not import this one (it sits to its left in
``docs/architecture.md``); this module converts, handing handcraft the dictionary's own ``encode`` /
``decode``.

Refused, each with one line (``BookError`` / ``DictionaryError``, exit 2 in the CLI): a dictionary the book
does not have; one whose d_in / d_out or layer does not fit the model.
"""

from __future__ import annotations

from ..handcraft.features import FeatureDictionary
from .model import Dictionary
from .store import check_fits, load_from_book


def feature_dictionary(d: Dictionary, number: int = 0, name: str = "", cfg=None, device=None) -> FeatureDictionary:
    """Handcraft's view of ``d`` (numbered ``number`` in its book), checked against ``cfg`` when given.
    It holds a private float32 copy on ``device``: splicing never moves the caller's dictionary."""
    if cfg is not None:
        check_fits(d, cfg)
    own = Dictionary.from_tensors(d.cfg, d.tensors()).eval()
    if device is not None:
        own = own.to(device)
    return FeatureDictionary(name=name or f"dictionary {number}", number=int(number), layer=int(d.cfg.layer),
                             kind=d.cfg.kind, W_enc=own.W_enc.detach(), b_enc=own.b_enc.detach(),
                             W_dec=own.W_dec.detach(), encode=own.encode, decode=own.decode)


def book_feature_dictionaries(book, names, cfg, device=None) -> dict[str, FeatureDictionary]:
    """{which: FeatureDictionary} for the dictionaries called / numbered ``names`` in ``book``, each checked
    against the model config ``cfg``."""
    out = {}
    for which in names:
        d, row = load_from_book(book, which)
        out[str(which)] = feature_dictionary(d, row["number"], row["name"], cfg, device)
    return out
