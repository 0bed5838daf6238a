"""Hand-written labels as explanations: a label that parses becomes a program authored by its writer.

Accepted label forms (case of class names as in the book; words separated by commas or spaces):

    A -> B            A and B known token classes (or "A/B" unions): fires on class A, promotes class B
    fires on W1, W2 [-> | promotes W3, W4]    words (single tokens) on the input and optional output side

Anything else stays free text (no program; not scored). :func:`import_labels` appends each labelled unit's
parsed label to the explanations table as its writer's (the last author in the label history, else
"person"), once per label text, so a person's label wins over "auto" (``book/explanations.py``).
"""

from __future__ import annotations

import re

from ..book import Book
from ..book import explanations as be
from ..book import roles as br
from ..handcraft.spec import OutputRule, TokenSet
from .program import ActivationProgram, Clause

_ARROW = re.compile(r"\s*(?:->|→|\bto\b)\s*")


def _side(text: str, classes: dict) -> TokenSet | None:
    text = text.strip()
    if not text:
        return None
    names = text.split("/")
    if all(n.strip() in classes for n in names):
        if len(names) == 1:
            return TokenSet(cls=names[0].strip())
        return TokenSet(ids=sorted({i for n in names for i in classes[n.strip()]}))
    words = [w for w in re.split(r"[,\s]+", text) if w]
    return TokenSet(words=words) if words else None


def parse_label(label: str, classes: dict[str, list[int]]) -> ActivationProgram | None:
    """A program for a hand-written neuron label, or None when it is free text (see the module doc)."""
    s = label.strip()
    m = re.match(r"^fires on\s+(.+?)(?:\s*(?:->|→|;?\s*promotes)\s+(.+))?$", s, re.I)
    if m:
        inp, out = _side(m.group(1), classes), _side(m.group(2) or "", classes)
    else:
        parts = _ARROW.split(s)
        if len(parts) != 2 or not all(p.strip() in classes or all(x.strip() in classes for x in p.split("/"))
                                      for p in parts):
            return None
        inp, out = _side(parts[0], classes), _side(parts[1], classes)
    if inp is None:
        return None
    return ActivationProgram([Clause(scale=1.0, tokens=inp)], 0.0, OutputRule(promote=out) if out else None)


def import_labels(book: Book) -> int:
    """Append every parseable label of an activation unit not yet imported verbatim; returns how many."""
    from ..units import unit_kind

    classes = br.class_tokens(book)
    rows = []
    for u in book.labelled():
        if unit_kind(u.kind).stats != "activation":
            continue
        prog = parse_label(u.label, classes)
        if prog is None:
            continue
        hist = book.label_history(u.kind, u.layer, u.idx)
        author = next((h["author"] for h in reversed(hist) if h["label"] is not None and h["author"]), "") or "person"
        if be.author_rank(author) < 2:
            author = f"person:{author}"
        if any(e["sentence"] == u.label and e["author"] == author for e in be.history(book, u.kind, u.layer, u.idx)):
            continue
        rows.append((u.kind, u.layer, u.idx, author, u.label, prog.to_dict(), {"from": "label"}))
    be.add_explanations(book, rows)
    return len(rows)
