"""book/graphs.py: the saved-graph tables, name uniqueness, overwrite cascading, listing counts."""

from __future__ import annotations

import pytest

from circuitbook.book import Book
from circuitbook.book import graphs as store


def _save(book, name, overwrite=False, n=3):
    return store.save_graph(book, name, prompt="p", target=7, settings={"max_nodes": n}, meta={"x": 1},
                            nodes=[{"id": f"n{i}"} for i in range(n)], edges=[{"source": "n0", "target": "n1"}],
                            model_fingerprint="fp", book_fingerprint="bf", overwrite=overwrite)


def test_tables_and_round_trip(tmp_path):
    book = Book.open(tmp_path / "b.db")
    assert book.schema_versions()["graphs"] == len(store.MIGRATIONS)
    gid = _save(book, "a")
    r = store.graph_row(book, "a")
    assert r["id"] == gid and r["nodes"][2] == {"id": "n2"} and r["settings"] == {"max_nodes": 3}
    store.set_supernodes(book, gid, [("s", ["n0", "n1"], "user")])
    hid = store.add_hypothesis(book, gid, "claim", {"how": "zero"}, 0.5)
    store.record_experiment(book, hid, {"delta": -1.0}, "supported", "fp")
    assert store.hypothesis(book, gid, hid)["status"] == "supported"
    [row] = store.saved_graphs(book)
    assert (row["n_nodes"], row["n_edges"], row["n_supernodes"], row["n_hypotheses"]) == (3, 1, 1, 1)
    with pytest.raises(store.GraphNameError, match="already saved"):
        _save(book, "a")
    gid2 = _save(book, "a", overwrite=True, n=5)
    assert store.supernodes(book, gid2) == [] and store.hypotheses(book, gid2) == []
    assert store.experiments(book, hid) == []  # cascaded with the replaced graph
    assert store.graph_row(book, "a")["settings"] == {"max_nodes": 5}
    with pytest.raises(store.GraphNameError, match="saved: a"):
        store.graph_row(book, "b")
    with pytest.raises(store.BookError, match="no hypothesis 99"):
        store.hypothesis(book, gid2, 99)
