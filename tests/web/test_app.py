"""The app's routes through FastAPI's test client: rendering, filters, validation, escaping, safety."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from circuitbook.book import Book
from circuitbook.web import create_app

XSS = "<script>alert('x')</script><b>bold</b> & \"quotes\""


@pytest.fixture(scope="module")
def demo_model():
    from circuitbook.demo import build_demo

    return build_demo().model


@pytest.fixture()
def book(tmp_path, demo_model):
    b = Book.open(tmp_path / "book.db")
    b.bind_model(demo_model)
    b.set_label("neuron", 0, 5, label="pronoun detector", notes="fires on he/she", status="hypothesis")
    b.set_label("neuron", 0, 7, label=XSS, notes=XSS)
    b.set_label("head", 0, 2, label="copy head", status="supported")
    return b


@pytest.fixture()
def client(book):
    return TestClient(create_app(book), base_url="http://127.0.0.1:8000")


def test_index_lists_every_unit(client, book):
    r = client.get("/")
    assert r.status_code == 200
    cfg = book.config
    rows = re.findall(r"<tr data-kind=\"(neuron|head)\"", r.text)
    assert rows.count("neuron") == cfg["d_mlp"] * cfg["n_layers"]
    assert rows.count("head") == cfg["n_heads"] * cfg["n_layers"]
    assert "pronoun detector" in r.text and "copy head" in r.text


@pytest.mark.parametrize("query, expect", [
    ({"q": "pronoun"}, ["N0.5"]),
    ({"q": "he/she"}, ["N0.5"]),                      # notes are searched too
    ({"kind": "head", "label": "labelled"}, ["H0.2"]),
    ({"label": "supported"}, ["H0.2"]),
    ({"label": "labelled", "kind": "neuron"}, ["N0.5", "N0.7"]),
    ({"q": "pronoun detector", "kind": "head"}, []),
])
def test_index_filters(client, query, expect):
    r = client.get("/", params=query)
    assert r.status_code == 200
    assert re.findall(r"<td><a href=\"/(?:neuron|head)/0/\d+\">([NH]0\.\d+)</a>", r.text) == expect


def test_index_paginates(client):
    r = client.get("/", params={"kind": "neuron"})
    assert "of 64 matching" in r.text  # 64 <= 500: no next link
    assert 'id="more"' not in r.text


def test_unit_pages_render(client):
    r = client.get("/neuron/0/5")
    assert r.status_code == 200
    assert 'value="pronoun detector"' in r.text and "fires on he/she" in r.text
    assert '<option value="hypothesis" selected>' in r.text
    r = client.get("/head/0/2")
    assert r.status_code == 200 and 'value="copy head"' in r.text


def test_book_text_is_escaped(client):
    for url in ("/", "/neuron/0/7"):
        text = client.get(url).text
        assert "<script>alert" not in text and "<b>bold</b>" not in text
        assert "&lt;script&gt;alert(" in text


@pytest.mark.parametrize("url, message", [
    ("/neuron/0/64", "no neuron 64 in layer 0"),
    ("/neuron/1/0", "no layer 1"),
    ("/head/0/4", "no head 4 in layer 0"),
    ("/neuron/-1/0", "must be a non-negative integer"),
    ("/neuron/0/abc", "must be a non-negative integer"),
    ("/widget/0/1", "no such unit kind"),
    ("/neuron/0/1/extra", "no page at"),
    ("/neuron/0/1/../../../etc/passwd", "etc"),  # the client normalises the dots: still a 404, no file
    ("/static/..%2Fapp.py", "404"),
    ("/static/app.py", "no static file"),
    ("/go?unit=X9", "is not a unit name"),
])
def test_bad_paths_are_404_with_a_message(client, url, message):
    r = client.get(url)
    assert r.status_code == 404
    assert message in r.text


def test_go_redirects(client):
    r = client.get("/go", params={"unit": "n0.5"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/neuron/0/5"


def test_static_assets(client):
    assert "label-form" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_label_api_json_and_form(client, book):
    r = client.post("/api/unit/neuron/0/9/label", json={"label": " article ", "status": "refuted"})
    assert r.status_code == 200 and r.json()["label"] == "article" and r.json()["status"] == "refuted"
    r = client.post("/api/unit/neuron/0/9/label", data={"notes": "via form"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/neuron/0/9"
    u = Book.open(book.path).neuron(0, 9)  # a fresh handle: it is in the file
    assert (u.label, u.notes, u.status) == ("article", "via form", "refuted")
    assert [h["author"] for h in book.label_history("neuron", 0, 9)] == ["web", "web"]
    assert client.get("/api/unit/neuron/0/9").json()["notes"] == "via form"


@pytest.mark.parametrize("body, status, message", [
    ({"status": "bogus"}, 400, "status must be one of"),
    ({"label": 5}, 400, "label must be a string"),
    ({"label": "x" * 501}, 400, "limit is 500"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_label_api_rejects_bad_input(client, book, body, status, message):
    r = client.post("/api/unit/neuron/0/3/label", json=body)
    assert r.status_code == status and message in r.json()["detail"]
    assert book.label_history("neuron", 0, 3) == []


def test_label_api_bad_unit(client):
    r = client.post("/api/unit/neuron/0/999/label", json={"label": "x"})
    assert r.status_code == 404 and "no neuron 999" in r.json()["detail"]


def test_cross_origin_write_and_foreign_host_refused(client, book):
    r = client.post("/api/unit/neuron/0/3/label", json={"label": "pwned"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.get("/", headers={"host": "evil.example"})
    assert r.status_code == 421  # DNS rebinding: a loopback server answers loopback names only
    assert book.neuron(0, 3).label == ""
    ok = client.post("/api/unit/neuron/0/3/label", json={"label": "mine"}, headers={"origin": "http://127.0.0.1:8000"})
    assert ok.status_code == 200


def test_labels_only_book_without_model(tmp_path):
    """A book that is not bound to a model yet: the index shows the labelled units, pages render."""
    b = Book.open(tmp_path / "bare.db")
    b.set_label("neuron", 2, 17, label="lonely")
    c = TestClient(create_app(b), base_url="http://127.0.0.1")
    assert "lonely" in c.get("/").text
    assert c.get("/neuron/2/17").status_code == 200


def test_handcraft_results_show(client, book):
    from circuitbook.book import handcraft

    handcraft.save_evaluation(book, "pronoun <spec>", "spec text", {
        "n_tokens": 100, "ce_original": 2.0, "ce_handcrafted": 2.5, "recovered": {"zero": 0.6, "mean": 0.75}},
        [("neuron", 0, 5, "replaced", "pv <neuron>")])
    handcraft.save_coverage(book, {"mode": "mean", "n_tokens": 100, "ce_original": 2.0, "ce_ablated": 3.0,
                                   "ce_kept": 2.2, "recovered": 0.8, "units": [["neuron", 0, 5]]})
    assert "recover 80.0% of the loss" in client.get("/").text
    page = client.get("/neuron/0/5").text
    assert "pronoun &lt;spec&gt;" in page and "pv &lt;neuron&gt;" in page and "0.750" in page


def test_head_composition_links_other_heads(tmp_path):
    import numpy as np

    from circuitbook.book import circuits

    b = Book.open(tmp_path / "two.db")
    b.set_meta("model_config", {"n_layers": 2, "d_mlp": 4, "n_heads": 2})
    scores = np.zeros((2, 2, 2, 2))
    scores[0, 1, 1, 0] = 0.7
    with b.transaction() as c:
        circuits.store_head_scores(c, 1, 0, {"ov_copying": 0.25})
        circuits.store_composition(c, "K", scores)
    page = TestClient(create_app(b), base_url="http://127.0.0.1").get("/head/1/0").text
    row = re.search(r"id='composition'>.*?</table>", page, re.S).group(0)
    assert "<td>K</td><td><a class='unit-link' href='/head/0/1'>H0.1</a> &rarr; " \
           "<a class='unit-link' href='/head/1/0'>H1.0</a></td><td class='num'>0.7</td>" in row
