"""Every SQL statement lives in circuitbook/book/: no other module calls execute / executemany / executescript."""

from __future__ import annotations

import re
from pathlib import Path

import circuitbook

PACKAGE = Path(circuitbook.__file__).resolve().parent
SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")


def sql_calls(root: Path) -> dict[str, list[int]]:
    """{path relative to root: [line numbers calling execute / executemany / executescript]}."""
    out: dict[str, list[int]] = {}
    for f in sorted(root.rglob("*.py")):
        lines = [i for i, line in enumerate(f.read_text().splitlines(), 1) if SQL_CALL.search(line)]
        if lines:
            out[f.relative_to(root).as_posix()] = lines
    return out


def test_no_sql_outside_book():
    calls = sql_calls(PACKAGE)
    outside = {p: ls for p, ls in calls.items() if not p.startswith("book/")}
    assert outside == {}, f"SQL outside book/: {outside}"


def test_the_check_sees_sql(tmp_path):
    # the scan finds the book's own statements, and a planted one outside book/
    assert any(p.startswith("book/") for p in sql_calls(PACKAGE))
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "x.py").write_text("a = 1\nbook.conn.executemany('INSERT', rows)\n")
    assert sql_calls(tmp_path) == {"web/x.py": [2]}
