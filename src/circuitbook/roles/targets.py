"""Rule targets: the token sets a side of a syntax rule may name, over a typing universe.

Three families, every one tested as a first-class target (its multiple-testing cost is paid in
``classify``: a side's best p-value is multiplied by the number of targets, Bonferroni):
  * the 12 classes of ``pos.CLASSES`` ("DET", "NOUN", ...);
  * unions of two word classes (every pair of the 10 classes other than PUNCT and OTHER), named by their
    classes in CLASSES order joined by "/" ("NOUN/ADJ", "VERB/ADV"): how the seed speaks ("articles ->
    adjectives and nouns");
  * fine targets (``pos.FINE_TARGETS``: past-tense verbs "VBD", plural nouns "NNS", possessives "PRP$", ...)
    holding the universe tokens whose dominant fine tag is in the set, kept when >= ``min_size`` tokens.
A rule side is the target with the smallest p; a nested family means the most specific target that holds the
selection wins ("PRON" over "PRON/NOUN" for a set of pronouns, "VBD" over "VERB" for past-tense verbs).
A union counts only when both its classes are really there: each holds >= 2 of the union's selected tokens
and >= ``UNION_MIN_SHARE`` of them (ten nouns and two auxiliaries are a NOUN side, six adjectives and six
nouns an ADJ/NOUN side).
"""

from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np

from .pos import CLASSES, FINE_TARGETS

UNION_CLASSES = tuple(c for c in CLASSES if c not in ("PUNCT", "OTHER"))
UNION_MIN_SHARE = 0.25


@dataclasses.dataclass
class Targets:
    """``names`` [T]; ``family`` [T] ("class", "union" or "fine"); ``masks`` [T, N] bool over the universe;
    ``parts`` [T] the class indices a union joins (empty for the others). Class targets come first, in
    CLASSES order, so column c of a class enrichment is class c."""

    names: list[str]
    family: list[str]
    masks: np.ndarray
    parts: list[tuple[int, ...]]

    def effect_ok(self, k: np.ndarray) -> np.ndarray:
        """[n, T] bool from selected counts ``k`` [n, T]: False for unions one of whose classes is hardly there."""
        ok = np.ones(k.shape, dtype=bool)
        for t, parts in enumerate(self.parts):
            if parts:
                kp = k[:, list(parts)]
                ok[:, t] = kp.min(1) >= np.maximum(2, UNION_MIN_SHARE * kp.sum(1))
        return ok

    def __len__(self) -> int:
        return len(self.names)


def union_name(classes) -> str:
    """The canonical name of a class union: members in CLASSES order joined by "/"."""
    return "/".join(c for c in CLASSES if c in set(classes))


def side_classes(name: str) -> set[str]:
    """The classes or fine target a rule side names ("NOUN/ADJ" -> {"NOUN", "ADJ"}; "VBD" -> {"VBD"})."""
    return set(name.split("/")) if name else set()


def build_targets(cls: np.ndarray, tags: list[str], unions: bool = True, fine: bool = True,
                  min_size: int = 3) -> Targets:
    """Targets over a universe with dominant classes ``cls`` [N] (indices into CLASSES) and fine ``tags`` [N]."""
    names, family, masks, parts = [], [], [], []
    for i, c in enumerate(CLASSES):
        names.append(c), family.append("class"), masks.append(cls == i), parts.append(())
    if unions:
        for a, b in combinations(UNION_CLASSES, 2):
            names.append(union_name((a, b))), family.append("union")
            parts.append((CLASSES.index(a), CLASSES.index(b)))
            masks.append((cls == CLASSES.index(a)) | (cls == CLASSES.index(b)))
    if fine:
        tags_arr = np.asarray(tags, dtype=object)
        for name, members in FINE_TARGETS.items():
            m = np.isin(tags_arr, members)
            if m.sum() >= min_size:
                names.append(name), family.append("fine"), masks.append(m), parts.append(())
    return Targets(names, family, np.stack(masks), parts)
