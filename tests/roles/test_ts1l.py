"""The real stand-in model: typing completes on a subset of the shared stories and finds the documented
article neuron's rule (PROVENANCE: neuron 1593 fires on articles and promotes nouns): its input side names DET
(alone or with ADJ, the rest of the noun phrase it fires in), its output side NOUN."""

from __future__ import annotations

from itertools import islice

import pytest

from circuitbook.book import Book
from circuitbook.corpus import read_stories
from circuitbook.roles.run import type_model


@pytest.mark.slow
def test_ts1l_typing_subset(ts1l, stories_path, tmp_path):
    stories = list(islice(read_stories(stories_path), 300))
    book = Book.open(tmp_path / "ts.db")
    res = type_model(ts1l, stories, book=book, progress=False)
    assert len(res.types) == ts1l.cfg.d_mlp
    assert sum(res.summary.counts.values()) == 2048
    u = {t.idx: t for t in res.types}[1593]
    lhs, rhs = u.rule.split(" -> ")
    # articles (with the adjectives of the same noun phrases) -> nouns
    assert u.type in ("syntax", "mixed") and "DET" in lhs.split("/") and "NOUN" in rhs.split("/")
    from circuitbook.book import roles as bt

    assert bt.unit_type(book, 0, 1593)["rule"] == u.rule
    assert len(bt.unit_types(book)) == 2048
