"""The graph package's layering: types <- prompt <- attribution, types <- render; no import of render (or
of web/) from the data types, the prompt helpers or the maths, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import circuitbook.graph as graph

PKG = Path(graph.__file__).parent


def _imports(name: str) -> set[str]:
    """Every module a file imports (relative imports spelled with their dots), anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse((PKG / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("name,forbidden", [
    ("types", {".render", ".attribution", ".prompt", ".intervene", ".predictions"}),
    ("prompt", {".render", ".attribution"}),
    ("attribution", {".render"}),
    ("intervene", {".render", ".attribution"}),
    ("predictions", {".render", ".attribution"}),
    ("render", {".attribution", ".prompt"}),
])
def test_no_import_circle(name, forbidden):
    imports = _imports(name)
    assert not imports & forbidden, f"graph/{name}.py imports {sorted(imports & forbidden)}"
    assert not any(m.startswith(("..web", "circuitbook.web")) for m in imports)


def test_public_names_still_exported_and_types_carry_no_urls():
    for name in ("Node", "Edge", "Graph", "DirectLogit", "GraphError", "attribute", "direct_logit",
                 "prompt_tokens", "resolve_token", "to_json", "to_svg", "from_json", "SCHEMA"):
        assert hasattr(graph, name), name
    assert graph.Node is graph.types.Node and graph.prompt_tokens is graph.prompt.prompt_tokens
    assert not hasattr(graph.Node, "link")
    assert not any(hasattr(graph.Graph, m) for m in ("to_json", "to_svg", "_repr_html_"))
    doc = graph.types.__doc__
    assert "source" in doc and "target" in doc and "bias_flow" in doc and "stage" in doc
