"""The book core: migrations, model binding, labels with history, concurrency, clear errors."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from circuitbook.book import Book, BookError, Component, register_component
from circuitbook.book.core import _COMPONENTS
from circuitbook.demo import build_demo


@pytest.fixture()
def book(tmp_path):
    b = Book.open(tmp_path / "b.db")
    b.bind_model(build_demo().model)
    return b


def test_bind_model_and_vocab(book):
    assert book.config["d_mlp"] == 64 and book.token_strs()[3].strip() == "he"
    other = build_demo(seed=1).model
    with pytest.raises(BookError, match="describes model"):
        book.bind_model(other)
    book.bind_model(other, overwrite=True)
    assert book.get_meta("model_source") == other.source


def test_labels_persist_and_are_logged(book, tmp_path):
    book.set_label("neuron", 0, 5, label="pronoun -> verb", status="hypothesis")
    book.set_label("neuron", 0, 5, notes="fires on He/She")
    again = Book.open(tmp_path / "b.db")
    u = again.neuron(0, 5)
    assert (u.label, u.notes, u.status) == ("pronoun -> verb", "fires on He/She", "hypothesis")
    assert len(again.label_history("neuron", 0, 5)) == 2
    assert [x.key for x in again.labelled()] == ["N0.5"]
    assert "pronoun -&gt; verb" in u._repr_html_()


@pytest.mark.parametrize("args, msg", [(("neuron", 0, 64), "no neuron 0.64"), (("head", 1, 0), "no head 1.0"),
                                       (("cell", 0, 0), "must be 'neuron' or 'head'")])
def test_bad_units(book, args, msg):
    with pytest.raises(BookError, match=msg):
        book.unit(*args)


def test_bad_status(book):
    with pytest.raises(BookError, match="status must be"):
        book.set_label("neuron", 0, 1, status="maybe")


def test_concurrent_writes_lose_nothing(book):
    def write(i):
        Book.open(book.path).set_label("neuron", 0, i % 8, label=f"label {i}", author=f"t{i}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert book.conn.execute("SELECT count(*) FROM label_history").fetchone()[0] == 40
    assert len(book.labelled()) == 8


def test_component_migrations_apply_once_and_upgrade(tmp_path):
    register_component(Component("zz_test", ["CREATE TABLE zz (a INTEGER);"],
                                 read_unit=lambda b, k, l, i: {"a": 1} if k == "neuron" else None))
    try:
        b = Book.open(tmp_path / "c.db")
        assert b.schema_versions()["zz_test"] == 1
        _COMPONENTS["zz_test"].migrations.append("ALTER TABLE zz ADD COLUMN b TEXT;")
        b2 = Book.open(tmp_path / "c.db")  # an old book upgrades in place
        assert b2.schema_versions()["zz_test"] == 2
        b2.conn.execute("INSERT INTO zz VALUES (1, 'x')")
        Book.open(tmp_path / "c.db")  # and nothing is applied twice
        assert b2.neuron(0, 0).sections["zz_test"] == {"a": 1}
    finally:
        del _COMPONENTS["zz_test"]


def test_transaction_rolls_back(book):
    with pytest.raises(RuntimeError):
        with book.transaction() as c:
            book.set_meta("half", 1, c)
            raise RuntimeError("disk full")
    assert book.get_meta("half") is None


def test_not_a_book(tmp_path):
    (tmp_path / "x.db").write_text("this is not sqlite" * 100)
    with pytest.raises(BookError, match="not a circuitbook book"):
        Book.open(tmp_path / "x.db")
    with pytest.raises(BookError, match="does not exist"):
        Book.open(tmp_path / "missing" / "x.db")
