"""Pages over a real book: the demo model scanned and analysed by the real scan and circuits stages
(planted ground truth: the pronoun->verb neuron and the name-copying head), and a ts-1l-dev scan of a
corpus containing markup, viewed in a real Chromium."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from fastapi.testclient import TestClient

from circuitbook.book import Book
from circuitbook.book import scan as scan_book
from circuitbook.web import create_app, export_site

from .conftest import goto, live_server, wait_css

MARKUP_STORY = ("Tom saw a sign that said <script>window.cbPwned=1</script> and <b>bold</b> & "
                "<img src=x onerror=\"window.cbPwned=2\">. He was happy.")


@pytest.fixture(scope="module")
def demo_book(tmp_path_factory):
    from circuitbook.circuits.run import run_circuits
    from circuitbook.demo import build_demo
    from circuitbook.scan.run import scan_corpus

    demo = build_demo()
    path = tmp_path_factory.mktemp("demo") / "book.db"
    book = Book.open(path)
    scan_corpus(demo.model, demo.stories[:100], book, progress=False, k=8, r=1, before=12, after=4)
    run_circuits(demo.model, book, demo.stories[:50], progress=False)
    return demo, path


@pytest.fixture(scope="module")
def markup_book(tmp_path_factory, ts1l, stories_path):
    from circuitbook.corpus import read_stories
    from circuitbook.scan.run import scan_corpus

    stories = list(itertools.islice(read_stories(stories_path), 8))
    stories.insert(2, MARKUP_STORY)
    path = tmp_path_factory.mktemp("markup") / "book.db"
    scan_corpus(ts1l, stories, path, progress=False, k=4, r=1, before=10, after=2)
    return path


def _strs(demo, cls):
    t = demo.model.tokenizer
    return {t.token_str(i) for i in demo.truth["classes"][cls]}


def test_planted_neuron_page_shows_its_mechanism(demo_book):
    demo, path = demo_book
    n = demo.truth["pronoun_verb"]
    page = TestClient(create_app(Book.open(path)), base_url="http://127.0.0.1").get(f"/neuron/0/{n}").text
    # output effects: the promoted tokens are the planted verbs (weights-based, circuits stage)
    out = re.search(r"id='effects-output'>(.*?)</div>", page, re.S).group(1)
    top = re.search(r"<caption>top</caption>(.*?)</table>", out, re.S).group(1)
    promoted = [s.replace("&#x27;", "'") for s in re.findall(r"<td class='tokcell'>(.*?)</td>", top)]
    assert promoted and set(promoted) <= _strs(demo, "VERB") | _strs(demo, "SEARCH")
    # top examples (scan stage): every outlined max token is a pronoun, activations on hover
    ex = re.search(r"<h4>Top activations</h4>(.*?)</div></div>", page, re.S).group(1)
    marked = re.findall(r"<span class='tok mark'[^>]*>(.*?)</span>", ex)
    assert marked and set(marked) <= _strs(demo, "PRON")
    book = Book.open(path)
    best = scan_book.top_examples(book, "neuron", 0, n, k=1)[0]
    assert f"data-act='{best.value:.4g}'" in ex
    assert "<svg class='cb-hist'" in page


def test_planted_head_page_and_index(demo_book):
    demo, path = demo_book
    h = demo.truth["copy_head"]
    c = TestClient(create_app(Book.open(path)), base_url="http://127.0.0.1")
    page = c.get(f"/head/0/{h}").text
    assert "<svg class='cb-attn'" in page and "Skip-trigrams" in page and "OV circuit" in page
    # the OV circuit of the copying head maps each name to itself
    ov = re.search(r"OV circuit: source token -&gt; output logit</caption>(.*?)</table>", page, re.S).group(1)
    cells = re.findall(r"<code>(.*?)</code>", ov)
    pairs = list(zip(cells[::2], cells[1::2]))[:4]
    assert pairs and all(a == b and a in _strs(demo, "NAME") for a, b in pairs)
    # the same view inline in a notebook
    from circuitbook.book.render import view

    nb = view(Book.open(path), "head", 0, h)._repr_html_()
    assert "<svg class='cb-attn'" in nb and "Skip-trigrams" in nb and "<style>" in nb
    index = c.get("/").text
    assert "<th class=\"num\">copying</th>" in index and "<th class=\"num\">fire %</th>" in index
    # text search reaches the neurons' top tokens
    hits = c.get("/", params={"q": "searched", "kind": "neuron"}).text
    assert f">N0.{demo.truth['search']}</a>" in hits


def test_demo_export_has_data(demo_book, tmp_path):
    demo, path = demo_book
    export_site(Book.open(path, readonly=True), tmp_path / "site", progress=False)
    page = (tmp_path / "site" / "neuron" / "0" / f"{demo.truth['pronoun_verb']}.html").read_text()
    assert "effects-output" in page and "cb-hist" in page


def test_corpus_markup_is_shown_as_text(browser, markup_book):
    from selenium.webdriver.common.by import By

    book = Book.open(markup_book)
    # a neuron whose stored examples include the markup story (story index 2)
    unit = next(i for i in range(book.config["d_mlp"])
                if any(e.story == 2 and "<script>" in e.text(book) for e in scan_book.top_examples(book, "neuron", 0, i)))
    with live_server(create_app(book)) as url:
        text = goto(browser, f"{url}/neuron/0/{unit}", "#sec-scan")[0].text
        shown = [e.text(book) for e in scan_book.top_examples(book, "neuron", 0, unit) if e.story == 2]
        assert any("<script>" in t for t in shown) and "<script>" in text
        assert browser.execute_script("return window.cbPwned === undefined")
        assert browser.execute_script("return document.querySelectorAll('main img, main script').length") == 0
        assert browser.execute_script(
            "return [...document.querySelectorAll('main b')].filter(b => b.textContent === 'bold').length") == 0
        # hover: each token carries its activation
        tok = browser.find_elements(By.CSS_SELECTOR, "#sec-scan .cb-text .tok[data-act]")[0]
        assert math.isfinite(float(tok.get_attribute("data-act")))
        assert tok.get_attribute("title").endswith(tok.get_attribute("data-act"))


@pytest.fixture(scope="module")
def typed_book(demo_book, tmp_path_factory):
    import shutil

    from circuitbook.errors import CircuitbookError
    from circuitbook.roles.run import type_model

    demo, path = demo_book
    typed = tmp_path_factory.mktemp("typed") / "book.db"
    src = Book.open(path)
    src.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, typed)
    book = Book.open(typed)
    try:
        type_model(demo.model, demo.stories[:200], book, progress=False)
    except CircuitbookError as e:  # no spaCy pipeline on this machine: the typing stage's own tests say so
        pytest.skip(f"typing stage unavailable: {e}")
    return demo, typed


def test_typing_filters_and_concept_search(typed_book):
    demo, path = typed_book
    c = TestClient(create_app(Book.open(path), model=demo.model), base_url="http://127.0.0.1")
    pv = demo.truth["pronoun_verb"]
    units = lambda r: re.findall(r'<td><a href="/(?:neuron|head)/0/\d+">([NH]0\.\d+)</a>', r.text)  # noqa: E731
    r = c.get("/", params={"type": "syntax", "cls": "PRON -> VERB"})
    assert f"N0.{pv}" in units(r)
    assert all(t == "syntax" for t in re.findall(r'data-type="(\w*)"', r.text))
    assert "PRON -&gt; VERB" in c.get(f"/neuron/0/{pv}").text  # typing evidence on the neuron page
    r = c.get("/", params={"concept": "look search find seek", "kind": "neuron"})
    assert units(r)[0] == f"N0.{demo.truth['search']}"
    r = c.get("/", params={"concept": "xyzzyplugh"})
    assert r.status_code == 200 and 'id="concept-error"' in r.text
