"""book/render.py: the HTML fragments shared by the web pages, the static export and notebooks."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from circuitbook.book import Book, Component, register_component
from circuitbook.book.core import unregister_component
from circuitbook.book import render


class _Collect(HTMLParser):
    """Parses a fragment the way a browser tokenises it: records tags and text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(fragment: str) -> _Collect:
    p = _Collect()
    p.feed(fragment)
    return p


EVIL = "<script>alert(1)</script>\"' onmouseover=x <img src=y>"


def test_tokens_are_escaped_and_carry_activations():
    toks = ["Once", " <b>", EVIL, "\n"]
    acts = [0.5, -1.0, 2.0, 0.0]
    p = _parse(render.tokens_html(toks, acts))
    spans = [a for t, a in p.tags if t == "span" and "tok" in a.get("class", "")]
    assert [t for t, _ in p.tags] == ["span"] * 5  # no tag from the text got through
    assert [float(s["data-act"]) for s in spans] == acts
    assert spans[2]["title"] == f"{EVIL!r}: 2"
    assert "".join(p.text) == "Once <b>" + EVIL + "\u21b5"
    # shading: strongest |act| fully opaque, sign picks the colour
    assert "rgba(255,140,0,1.000)" in spans[2]["style"] and "rgba(60,120,255,0.500)" in spans[1]["style"]


def test_histogram_svg_geometry():
    edges, counts = [-1.0, 0.0, 1.0, 2.0], [0, 10, 3]
    svg = render.histogram_svg(edges, counts, width=300, height=114, log=False)
    heights = [float(h) for h in re.findall(r"height='([\d.]+)'><title>", svg)]
    assert heights == [0.0, 100.0, 30.0]  # proportional to counts, plot area height - 14
    assert "x1='100.0'" in svg  # the zero line sits a third of the way along
    assert render.histogram_svg([0, 1], [1, 2]).startswith("<i>")  # mismatched shapes: no chart


def test_attention_rows_align_on_the_query():
    rows = [(["a", "b", "c"], [0.25, 0.75, float("nan")], 1), (["x", "y", "z"], [0.1, 0.2, 0.7], 2)]
    svg = render.attention_rows_svg(rows, cell_w=10, cell_h=10)
    rects = re.findall(r"<rect x='(\d+)' y='(\d+)'[^>]*fill='rgba\(200,40,40,([\d.]+)\)'", svg)
    # row 0: keys a (offset 1), b (the query, offset 0) -> columns 1, 2 of 3; row 1: x, y, z -> 0, 1, 2
    assert [(int(x), int(y), float(a)) for x, y, a in rects] == [
        (40, 14, 0.25), (50, 14, 0.75), (30, 24, 0.1), (40, 24, 0.2), (50, 24, 0.7)]


def test_value_html_recognises_shapes_and_escapes():
    ctx = render.Ctx(link=lambda k, l, i: f"/{k}/{l}/{i}", token_strs=["zero", " one", EVIL])
    out = render.value_html({
        "examples": [{"token_ids": [0, 1, 2], "acts": [0.0, 1.0, 0.5], "story": 3}],
        "hist": {"edges": [0, 1, 2], "counts": [4, 5]},
        "effects": [[" one", 1.5], [EVIL, -0.5]],
        "other": {"kind": "head", "layer": 0, "idx": 2, "score": 0.9},
        "note": EVIL,
    }, ctx)
    p = _parse(out)
    assert not any(t in ("script", "img") for t, _ in p.tags)
    assert "cb-hist" in out and "cb-examples" in out and "cb-bars" in out
    assert "<a class='unit-link' href='/head/0/2'>H0.2</a>" in out
    assert EVIL in html.unescape("".join(p.text))


def test_section_html_survives_a_broken_renderer():
    register_component(Component("broken", [], render_html=lambda sec, ctx: 1 / 0))
    try:
        out = render.section_html("broken", {"a": 1})
    finally:
        unregister_component("broken")
    assert "view failed: ZeroDivisionError" in out and "<table class='cb-kv'>" in out


def test_notebook_view(tmp_path):
    book = Book.open(tmp_path / "b.db")
    book.set_meta("model_config", {"n_layers": 1, "d_mlp": 4, "n_heads": 2})
    book.set_label("neuron", 0, 3, label=EVIL, notes="n", status="supported")
    v = render.view(book, "neuron", 0, 3)
    out = v._repr_html_()
    assert str(v) == out and "<script>alert" not in out
    assert html.escape(EVIL, quote=True) in out and "[supported]" in out
