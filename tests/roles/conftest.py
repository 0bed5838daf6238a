from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo():
    from circuitbook.demo import build_demo

    return build_demo(seed=3, d_mlp=192)


@pytest.fixture(scope="session")
def demo_typed(demo, tmp_path_factory):
    """The demo typed into a book (one run shared by the tests)."""
    from circuitbook.book import Book
    from circuitbook.roles.run import type_model

    path = tmp_path_factory.mktemp("typing") / "demo.db"
    book = Book.open(path)
    res = type_model(demo.model, demo.stories, book=book, progress=False)
    return demo, book, res
