"""Type a model end to end: token classes -> per-token scores -> classification -> book.

``type_model(model, stories, book=...)`` is the one call (the CLI's ``circuitbook type`` and the demo use it).
Each expensive step is cached in the book and reused when the corpus (and tagger) match: tagging (~30 s for
the 1,841 shared stories), the activation pass (one forward over the corpus, tapping only hook_post).
Interrupting loses at most the step under way; every write is one transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .classify import Settings, UnitType, classify
from .pos import CLASS_VERSION, TokenClasses, load_tagger, tagger_id, token_classes
from .scores import Universe, activation_means, input_effect, output_effect, random_units, universe
from .summary import Summary, summarize


@dataclasses.dataclass
class TypingRun:
    """Everything one typing run produced: types [n_units] in unit order (layer-major), the universe of
    tokens they were tested against, the token classes and the model summary."""

    types: list[UnitType]
    universe: Universe
    token_classes: TokenClasses
    summary: Summary


def stories_id(stories: list[str]) -> str:
    """A content hash of the stories (identifies the corpus in the cache)."""
    h = hashlib.sha256()
    for s in stories:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def type_model(model, stories, book=None, settings: Settings | None = None, min_count: int = 5,
               max_len: int = 256, batch_size: int = 16, progress: bool = True, nlp=None,
               classes: TokenClasses | None = None) -> TypingRun:
    """Type every neuron of ``model`` on ``stories`` (list of str); store in ``book`` when given.

    Caches (in the book) are reused when the stories' hash matches. ``classes``: the stories' token classes
    when already tagged (many models typed on one corpus share them)."""
    stories = list(stories)
    settings = settings or Settings()
    corpus = stories_id(stories)
    if book is not None:
        book.bind_model(model)
    from ..book import roles as bt

    tc, fresh = classes, classes is not None
    if tc is None and book is not None:
        tc = bt.load_token_classes(book, model.cfg.d_vocab, {"corpus": corpus, "class_version": CLASS_VERSION})
    if tc is None:
        nlp = nlp or load_tagger()
        tc = token_classes(stories, model.tokenizer, nlp, progress=progress, source={"corpus": corpus})
        fresh = True
    if book is not None and fresh:
        bt.store_token_classes(book, tc)
    U = universe(tc, min_count)

    acts = null_means = None
    source = {"corpus": corpus, "min_count": min_count, "n": len(U), "max_len": max_len,
              "n_null": settings.n_null_units, "seed": settings.seed}
    if book is not None:
        acts = bt.token_acts(book, source=source)
        if acts is not None and (len(acts[0]) != len(U) or not np.array_equal(acts[0], U.ids)):
            acts = None
        null_means = bt.null_acts(book, U.ids) if acts is not None else None
        if settings.n_null_units and null_means is None:
            acts = None
    if acts is None:
        means, counts, null_means = activation_means(model, stories, U.ids, max_len, batch_size, progress,
                                                     n_null=settings.n_null_units, seed=settings.seed)
        if book is not None:
            bt.store_token_acts(book, U.ids, counts, means, source, null_means)
    else:
        _, counts, means = acts

    strs = model.tokenizer.token_strs()
    types = classify(U, output_effect(model.weights, U.ids), model.weights.W_E[U.ids].float().numpy(),
                     model.cfg.d_mlp, act_means=means, in_effect=input_effect(model.weights, U.ids),
                     counts=counts, token_strs=strs, settings=settings,
                     null=random_units(model.weights, U.ids, settings.n_null_units, settings.seed, null_means)
                     if settings.n_null_units else None)
    if book is not None:
        bt.store_types(book, types, {**dataclasses.asdict(settings), "min_count": min_count, "corpus": corpus,
                                     "universe": len(U)})
    return TypingRun(types, U, tc, summarize(types))

