"""A unit kind registered after the fact is explained and scored with no explain-stage code of its own:
here a toy activation kind that reads the MLP's post-activation (so its truth is the planted neuron's)."""

from __future__ import annotations

import sqlite3

import pytest

from circuitbook.units import UnitKind, register_unit_kind, unregister_unit_kind


@pytest.fixture()
def toy_book(planted0, tmp_path):
    from circuitbook.book import Book

    src = planted0["book"]
    dst = tmp_path / "copy.db"
    with sqlite3.connect(src.path) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    register_unit_kind(UnitKind(name="toyfeat", letter="Q", title="toy feature",
                                count=lambda cfg, layer: int(cfg["d_mlp"] if isinstance(cfg, dict) else cfg.d_mlp),
                                tap="blocks.{layer}.mlp.hook_post", unit_axis=2, writes="test only",
                                write_weights=None, stats="activation", order=5, sublayer=2))
    try:
        book = Book.open(dst)
        n = planted0["demo"].truth["article_noun"]
        from circuitbook.book import scan as bs

        rows = [r for r in bs.top_examples(book, "neuron", 0, n)]
        con = sqlite3.connect(dst)
        import numpy as np

        con.executemany("INSERT INTO scan_examples (kind, layer, idx, section, band, rank, value, story, offset, focus, "
                        "extra, tokens, vals) VALUES ('toyfeat', 0, ?, 'top', -1, ?, ?, ?, ?, ?, 0, ?, ?)",
                        [(n, e.rank, e.value, e.story, e.offset, e.focus, np.asarray(e.tokens, np.int32).tobytes(),
                          np.asarray(e.values, np.float32).tobytes()) for e in rows])
        con.commit()
        con.close()
        yield planted0, book, n
    finally:
        unregister_unit_kind("toyfeat")


def test_new_kind_is_explained_and_scored(toy_book):
    from circuitbook.book import explanations as be
    from circuitbook.explain import explain_book, score_book
    from circuitbook.explain.propose import ProposeSettings

    planted0, book, n = toy_book
    s = explain_book(book, None, ProposeSettings(require_typing=False), kinds=["toyfeat"])
    assert s.by_kind == {"toyfeat": 1}
    prog = be.current(book, "toyfeat")[("toyfeat", 0, n)]["program"]
    assert set(prog["input"][0]["tokens"]["ids"]) <= set(planted0["demo"].truth["rules"]["article_noun"]["reads"])
    r = score_book(book, planted0["demo"].model, planted0["held"], kinds=["toyfeat"])
    (sc,) = r.scores
    # from top windows alone (a biased sample) the fit is coarser than with exact token means: scale and
    # baseline are estimated where the unit is strong, so the ablation score is lower than the neuron's
    assert sc.kind == "toyfeat" and sc.simulation >= 0.9 and sc.ablation >= 0.8  # generic forward path
    assert r.forwards > r.batches  # its ablation ran forwards (no fast path for an unknown writer)
