"""The explanations tables: append-only history, precedence (person > llm > auto), labels that parse."""

from __future__ import annotations

import pytest

from circuitbook.book import Book, BookError
from circuitbook.book import explanations as be
from circuitbook.explain.labels import import_labels, parse_label


@pytest.fixture()
def book(tmp_path):
    from circuitbook.demo import build_demo

    b = Book.open(tmp_path / "b.db")
    b.set_meta("model_config", build_demo(seed=0, n_stories=4).model.cfg.to_dict())
    return b


def test_history_is_append_only_and_people_win(book):
    a = be.add_explanation(book, "neuron", 0, 3, "auto", "fires on x", {"family": "activation", "input": []})
    p = be.add_explanation(book, "neuron", 0, 3, "alice", "fires on y")
    a2 = be.add_explanation(book, "neuron", 0, 3, "auto", "fires on z")
    l1 = be.add_explanation(book, "neuron", 0, 3, "llm:m", "llm says")
    assert [h["id"] for h in be.history(book, "neuron", 0, 3)] == [a, p, a2, l1]
    assert be.current(book)[("neuron", 0, 3)]["id"] == p  # a newer auto / llm does not replace a person
    be.add_explanation(book, "neuron", 0, 4, "auto", "one")
    l2 = be.add_explanation(book, "neuron", 0, 4, "llm:m", "two")
    be.add_explanation(book, "neuron", 0, 4, "auto", "three")
    assert be.current(book)[("neuron", 0, 4)]["id"] == l2
    with pytest.raises(BookError):
        be.add_explanation(book, "neuron", 0, 4, " ", "nobody")
    with pytest.raises(BookError):
        be.add_explanation(book, "neuron", 0, 10_000, "auto", "no such neuron")


def test_labels_that_parse_become_a_persons_explanation(book):
    classes = {"PRON": [1, 2], "VERB": [5, 6], "NOUN": [7]}
    p = parse_label("PRON -> VERB/NOUN", classes)
    assert p.clauses[0].tokens.cls == "PRON" and sorted(p.output.promote.ids) == [5, 6, 7]
    assert parse_label("fires on dog, cat promotes ran", classes).clauses[0].tokens.words == ["dog", "cat"]
    assert parse_label("something about stories", classes) is None
    book.conn.execute("INSERT INTO typing_token_classes VALUES (1, 5, 'PRON', 'PRP', '[]')")
    book.conn.execute("INSERT INTO typing_token_classes VALUES (5, 5, 'VERB', 'VBD', '[]')")
    be.add_explanation(book, "neuron", 0, 7, "auto", "auto idea")
    book.set_label("neuron", 0, 7, label="PRON -> VERB", author="bob")
    book.set_label("neuron", 0, 8, label="free text only", author="bob")
    assert import_labels(book) == 1 and import_labels(book) == 0  # once per label text
    cur = be.current(book)[("neuron", 0, 7)]
    assert cur["author"] == "bob" and cur["program"]["input"][0]["tokens"] == {"class": "PRON"}
    assert ("neuron", 0, 8) not in be.current(book)
