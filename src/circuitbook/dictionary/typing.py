"""Dictionary features typed with the neurons' statistics (``roles.classify``), from their weights.

This lives in the dictionary stage because it reads both: typing (to its left) supplies the statistics, the
dictionary the weights (``features.feature_weights``: the model with the dictionary in place of the MLP).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..roles.classify import Settings, UnitType, classify
from ..roles.pos import TokenClasses, load_tagger, token_classes
from ..roles.run import TypingRun, stories_id
from ..roles.scores import input_effect, output_effect, random_units, universe
from ..roles.summary import summarize
from .config import DictionaryError
from .features import feature_weights


def type_features(model, dictionary, stories, settings: Settings | None = None, min_count: int = 5,
                  classes: TokenClasses | None = None, nlp=None, progress: bool = True,
                  alive: np.ndarray | None = None) -> TypingRun:
    """Type every feature of a transcoder with the neurons' statistics (``classify``), from its weights: the
    model with the dictionary in place of the MLP (``dictionary.features.feature_weights``: W_enc reads the
    MLP input, W_dec writes its output), so a feature's input side is its direct-path input effect and its
    output side its direct logit effect, calibrated on random-direction units as for neurons. There is no
    activation source (feature activations are the scan's business), so the input side has one source.
    Unit ``idx`` is the feature index. ``alive`` [d_sae] bool (e.g. the scan's fire rate > 0): dead features
    keep the weights they were initialised with (W_enc = W_dec.T reads and writes the same tokens), so they
    are left out of every test and typed unclear with ``evidence = {"dead": True}``.
    SAEs read the MLP output, not the token stream: refused."""

    if dictionary.cfg.kind == "sae":
        raise DictionaryError("an SAE reads the MLP output, not the token stream: its features have no input side "
                              "to type (train a transcoder)")
    settings = settings or Settings()
    stories = list(stories)
    tc = classes
    if tc is None:
        tc = token_classes(stories, model.tokenizer, nlp or load_tagger(), progress=progress,
                           source={"corpus": stories_id(stories)})
    U = universe(tc, min_count)
    w = feature_weights(model.weights, dictionary)
    null = random_units(w, U.ids, settings.n_null_units, settings.seed) if settings.n_null_units else None
    n = dictionary.cfg.d_sae
    live = np.flatnonzero(np.ones(n, dtype=bool) if alive is None else np.asarray(alive, dtype=bool))
    typed = classify(U, output_effect(w, U.ids)[live], model.weights.W_E[U.ids].float().numpy(), n,
                     in_effect=input_effect(w, U.ids)[live], token_strs=model.tokenizer.token_strs(),
                     settings=settings, null=null) if len(live) else []
    types = [UnitType(0, i, "unclear", "", 0.0, 0.0, {"dead": True}) for i in range(n)]
    for i, t in zip(live, typed):
        types[i] = dataclasses.replace(t, layer=dictionary.cfg.layer, idx=int(i))
    return TypingRun(types, U, tc, summarize([t for t in types if "dead" not in t.evidence]))
