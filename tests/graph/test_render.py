"""JSON round trip, well-formed SVG with escaped token text, HTML for notebooks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from circuitbook.errors import CircuitbookError
from circuitbook.graph import attribute, from_json, to_html, to_json, to_svg
from circuitbook.graph.render import esc
from circuitbook.web.links import node_url

NS = {"s": "http://www.w3.org/2000/svg"}
EVIL = 'Lily said <script>alert("x")</script> & ran.\n\x01 She'


@pytest.fixture(scope="module")
def graph(ts1l):
    return attribute(ts1l, EVIL, max_nodes=40, max_edges=80, keep_inputs=True,
                     labels={("head", 0, h): f"<b>head {h}</b> & co" for h in range(16)})


def test_json_round_trip(graph, gpt2):
    text = json.dumps(to_json(graph))
    back = from_json(json.loads(text))
    assert back == graph
    assert from_json(text) == graph
    d = json.loads(text)
    assert d["schema"] == "circuitbook.graph/1"
    assert {n["id"] for n in d["nodes"]} == {n.id for n in graph.nodes}
    assert all(set(n) >= {"id", "kind", "layer", "index", "pos", "src", "token", "value", "direct", "activation",
                          "label", "title"} for n in d["nodes"])
    g2 = attribute(gpt2, [1, 2, 3, 4, 5], 6, contrast=7, max_nodes=None, max_edges=None)
    assert from_json(json.dumps(to_json(g2))) == g2
    with pytest.raises(CircuitbookError, match="schema"):
        from_json({"schema": "other"})


def test_svg_is_well_formed_and_escaped(graph):
    svg = to_svg(graph, link=node_url)
    root = ET.fromstring(svg)  # raises on malformed XML or raw control characters
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "<script" not in svg and "<b>" not in svg
    assert "&lt;b&gt;head" in svg  # labels shown, escaped
    assert {n.pos for n in graph.nodes if n.kind == "input"} == set(range(len(graph.tokens)))  # keep_inputs
    texts = " ".join("".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}title"))
    assert "<script>" in "".join(graph.token_strs)  # the prompt really carried the markup ...
    assert "script" in texts  # ... and it is shown as text
    nodes = [el for el in root.iter() if "cb-node" in el.get("class", "")]
    assert {el.get("data-id") for el in nodes} == {n.id for n in graph.nodes}
    for el in nodes:
        n = graph.node(el.get("data-id"))
        assert el.get("href") == node_url(n)  # None for inputs and the logit
        if n.kind == "neuron":
            assert el.get("href") == f"/neuron/0/{n.index}"
    edges = [el for el in root.iter() if el.get("class") == "cb-edge"]
    assert len(edges) == len(graph.edges)
    widths = {(el.get("data-source"), el.get("data-target")): float(el.get("stroke-width")) for el in edges}
    strongest = graph.edges[0]
    assert widths[(strongest.source, strongest.target)] == max(widths.values())
    colours = {el.get("stroke") for el in edges}
    assert colours <= {"#2b6cb0", "#c53030"}
    # inputs at the bottom, logit on top
    ys = {el.get("data-id"): float(next(c for c in el if c.tag.endswith(("rect", "ellipse"))).get("y")
                                   or next(c for c in el if c.tag.endswith("ellipse")).get("cy"))
          for el in nodes}
    assert ys["logit"] < min(y for i, y in ys.items() if i.startswith("input/"))
    custom = to_svg(graph, link=lambda n: f"u/{n.id}.html")
    assert 'href="u/logit.html"' in custom


def test_escape_and_html(graph):
    assert esc('<a href="x">&\x00\n') == "&lt;a href=&quot;x&quot;&gt;&amp;\\x00\\n"
    html = to_html(graph)
    assert "<svg" in html and "<script" not in html and "&lt;script&gt;" in html


def test_graph_json_carries_no_urls_and_the_web_adds_them(graph):
    from circuitbook.web.links import linked_json

    d = to_json(graph)
    assert not any("link" in n for n in d["nodes"]) and "href" not in json.dumps(d)
    linked = linked_json(graph)
    assert [n["link"] for n in linked["nodes"]] == [node_url(n) for n in graph.nodes]
    assert {n["link"] for n in linked["nodes"] if n["kind"] == "neuron"} == \
        {f"/neuron/0/{n.index}" for n in graph.nodes if n.kind == "neuron"}
    assert from_json(linked) == graph  # the web's extra field is ignored on the way back
    assert 'href=' not in to_svg(graph)  # no link function: the graph stage draws no links


def test_jupyter_display_via_show_and_the_ipython_formatter(graph):
    IPython = pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    from circuitbook.graph import show
    from circuitbook.graph.render import register_ipython

    assert show(graph)._repr_html_() == to_html(graph)
    assert 'href="/neuron/0/' in show(graph, link=node_url)._repr_html_()
    shell = InteractiveShell.instance()
    try:
        assert IPython.get_ipython() is shell and register_ipython()
        data, _ = shell.display_formatter.format(graph)
        assert data["text/html"] == to_html(graph)
    finally:
        InteractiveShell.clear_instance()
