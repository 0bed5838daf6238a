"""docs/architecture.md stays true: its worked example runs, and the package keeps its import and SQL rules."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "circuitbook"
DOC = ROOT / "docs" / "architecture.md"

# Data flows one way: a stage imports only stages to its left, plus book/ (storage) and the shared leaves.
RANK = {"model": 1, "corpus": 1, "scan": 2, "circuits": 3, "roles": 4, "book": 5, "graph": 6, "handcraft": 6,
        "dictionary": 7, "explain": 7, "scale": 8, "web": 8, "demo": 9, "cli": 10}
LEAVES = {"errors", "units", "progress", "tune"}


def _imports(path: Path) -> set[str]:
    """Top-level circuitbook packages a module imports (relative or absolute, at any depth in the file)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG).parts
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-1])[: len(rel) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # "from . import x" at the package top
                    parts = [a.name for a in node.names]
            elif node.module and node.module.startswith("circuitbook."):
                parts = node.module.split(".")[1:]
            else:
                continue
            out.add(parts[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("circuitbook."))
    return out


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        top = path.relative_to(PKG).parts[0].removesuffix(".py")
        yield path, top


def test_data_flows_one_way():
    bad = []
    for path, top in _modules():
        if top in LEAVES or top not in RANK:
            continue
        for dep in _imports(path) - {top} - LEAVES - {"book"}:  # every stage stores its results in book/
            if dep == "cli" or (dep == "web" and top not in ("demo", "cli")):
                bad.append(f"{path.relative_to(PKG)} imports {dep}/ (only the cli and the demo job run the web)")
            elif dep in RANK and RANK[dep] > RANK[top] and top not in ("demo", "cli"):
                bad.append(f"{path.relative_to(PKG)} ({top}) imports {dep}, a stage to its right")
    for path, top in _modules():
        if top in LEAVES:
            deps = _imports(path) - LEAVES - {top}
            if deps:
                bad.append(f"{path.relative_to(PKG)} is a shared leaf but imports {sorted(deps)}")
    assert not bad, "\n".join(bad)


def test_every_sql_statement_lives_in_book():
    pat = re.compile(r"\.(execute|executemany|executescript)\(")
    bad = [f"{p.relative_to(PKG)}:{i}" for p, _ in _modules() if p.relative_to(PKG).parts[0] != "book"
           for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not bad, f"SQL outside book/: {bad}"


def _worked_example() -> str:
    text = DOC.read_text()
    section = text[text.index("### Worked example"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_worked_example_adds_an_analysis(tmp_path):
    """The doc's example, run as a module: it registers, runs for every head, lands in the book, resumes."""
    from circuitbook.book import Book
    from circuitbook.book import circuits as bc
    from circuitbook.circuits import CircuitsSettings, make_basis, ov_matrix, run_circuits
    from circuitbook.circuits.tasks import unregister_task
    from circuitbook.demo import build_demo

    mod = types.ModuleType("my_analysis")
    exec(compile(_worked_example(), str(DOC), "exec"), mod.__dict__)
    try:
        model = build_demo().model
        s = CircuitsSettings(k=3, k_rows=2, n_pairs=10, n_trigrams=5, n_virtual=2, detector_seqs=2, detector_len=5)
        book = Book.open(tmp_path / "b.db")
        run_circuits(model, book, None, s, progress=False)
        basis = make_basis(model, None, s.pos_window)
        scores = bc.head_scores(book)
        for h in range(model.cfg.n_heads):
            dense = float(torch.linalg.matrix_norm(ov_matrix(basis, 0, h).double()))
            assert scores[(0, h)]["example_ov_norm"] == pytest.approx(dense, rel=1e-6)
        assert "example_ov_norm" in str(book.head(0, 1)["circuits"])
        assert run_circuits(model, book, None, s, progress=False).computed == 0
    finally:
        unregister_task(mod.OV_NORM.name)
