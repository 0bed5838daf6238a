"""``circuitbook type`` and ``circuitbook find`` end to end on the demo checkpoint, and bad input."""

from __future__ import annotations

import json

from circuitbook.cli import main


def test_type_and_find_cli(demo, tmp_path, capsys):
    d = demo.write(tmp_path / "demo")
    truth = json.loads((d / "truth.json").read_text())
    book = tmp_path / "b.db"
    assert main(["type", str(d), "--book", str(book), "--corpus", str(d / "stories.txt")]) == 0
    out = capsys.readouterr().out
    assert "PRON -> VERB" in out and "syntax" in out and f"L0N{truth['pronoun_verb']}" in out
    assert main(["find", str(book), "look search find seek", "-k", "3"]) == 0
    out = capsys.readouterr().out
    first = [l for l in out.splitlines() if l.startswith("N0.")][0]
    assert first.startswith(f"N0.{truth['search']} ") and "*" in first


def test_bad_input(tmp_path, capsys, demo):
    d = demo.write(tmp_path / "demo")
    assert main(["find", str(tmp_path / "missing.db"), "look"]) == 2
    assert "no book" in capsys.readouterr().err
    book = tmp_path / "b.db"
    assert main(["type", str(d), "--book", str(book)]) == 2  # no corpus given or recorded
    assert "corpus" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["type", str(d), "--book", str(book), "--corpus", str(empty)]) == 2
    from circuitbook.book import Book
    from circuitbook.roles.concepts import find_concept

    import pytest
    from circuitbook.roles.concepts import ConceptError

    with pytest.raises(ConceptError):
        find_concept(Book.open(book), demo.model, "zebra giraffe")
