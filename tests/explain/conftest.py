"""Planted truth for the explain stage: demo models (several seeds) scanned and typed on their first
stories; the rest are held out for scoring."""

from __future__ import annotations

import pytest

N_STORIES, N_FIT = 240, 160


def _planted(seed: int, tmp_path_factory):
    from circuitbook.book import Book
    from circuitbook.demo import build_demo
    from circuitbook.explain import explain_book
    from circuitbook.roles.run import type_model
    from circuitbook.scan import scan_corpus

    demo = build_demo(seed=seed, n_stories=N_STORIES)
    path = tmp_path_factory.mktemp(f"explain{seed}") / "book.db"
    book = Book.open(path)
    fit, held = demo.stories[:N_FIT], demo.stories[N_FIT:]
    scan_corpus(demo.model, fit, book, k=16, progress=False)
    type_model(demo.model, fit, book=book, progress=False)
    summary = explain_book(book, demo.model)
    return {"demo": demo, "book": book, "fit": fit, "held": held, "summary": summary}


@pytest.fixture(scope="session", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def planted(request, tmp_path_factory):
    return _planted(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def planted0(tmp_path_factory):
    return _planted(0, tmp_path_factory)


@pytest.fixture(scope="session")
def scored0(planted0):
    from circuitbook.explain import score_book

    return score_book(planted0["book"], planted0["demo"].model, planted0["held"])
