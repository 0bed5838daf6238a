"""The prompt page on ts-1l-dev: predictions, the attribution graph with book labels, node links,
ablation and the JSON / SVG exports, in the test client and in a real Chromium."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from circuitbook.book import Book
from circuitbook.graph import ablate, attribute, predict, to_json
from circuitbook.web import create_app

from .conftest import goto, live_server, wait_css

PROMPT = "Once upon a time, there was a little girl named Lily. She"


@pytest.fixture()
def book(tmp_path, ts1l):
    b = Book.open(tmp_path / "book.db")
    b.bind_model(ts1l)
    return b


@pytest.fixture()
def client(book, ts1l):
    return TestClient(create_app(book, model=ts1l), base_url="http://127.0.0.1")


def test_graph_json_matches_the_graph_stage_and_carries_labels(client, book, ts1l):
    g0 = client.get("/api/graph.json", params={"text": PROMPT}).json()
    neuron = next(n for n in g0["nodes"] if n["kind"] == "neuron")
    book.set_label("neuron", neuron["layer"], neuron["index"], label="my <neuron>")
    r = client.get("/api/graph.json", params={"text": PROMPT})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    g = r.json()
    ref = to_json(attribute(ts1l, PROMPT, labels=book.labelled()))
    assert [n["id"] for n in g["nodes"]] == [n["id"] for n in ref["nodes"]]
    assert g["target"] == ref["target"]
    assert all(n["link"] == (f"/{n['kind']}/{n['layer']}/{n['index']}" if n["kind"] in ("neuron", "head") else None)
               for n in g["nodes"])  # the web adds the unit links the graph stage does not carry
    labelled = [n for n in g["nodes"] if n["kind"] == "neuron" and n["index"] == neuron["index"]]
    assert labelled and all(n["label"] == "my <neuron>" for n in labelled)
    svg = client.get("/api/graph.svg", params={"text": PROMPT})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert "my &lt;neuron&gt;" in svg.text and f'href="/neuron/{neuron["layer"]}/{neuron["index"]}"' in svg.text


def test_prompt_page_predictions_and_target(client, ts1l):
    r = client.get("/prompt", params={"text": PROMPT, "target": " was", "pos": "-1"})
    assert r.status_code == 200
    assert "Attribution graph of logit[&#34; was&#34;] at position 14" in r.text
    preds = predict(ts1l, PROMPT)
    rows = re.findall(r"<tr(?: class=\"current\")?><td>(\d+)</td>", r.text)
    assert [int(x) for x in rows] == list(range(len(preds)))
    top = preds[-1].top[0]
    assert f"{top[2]:.3f}" in r.text


def test_prompt_graph_with_transcoder_features(client, book, ts1l):
    """?features=NAME: a transcoder of the book replaces the MLP in the page's graph and its exports."""
    import torch

    from circuitbook.dictionary import Dictionary, DictionaryConfig
    from circuitbook.dictionary.graph import book_transcoders
    from circuitbook.dictionary.store import save_to_book

    g_ = torch.Generator().manual_seed(0)
    d_model, n = ts1l.cfg.d_model, 64
    d = Dictionary.from_tensors(DictionaryConfig("transcoder", 0, d_model, n, "topk", k=4), {
        "W_enc": torch.randn(d_model, n, generator=g_), "b_enc": torch.zeros(n),
        "W_dec": torch.randn(n, d_model, generator=g_) * 0.05, "b_dec": torch.zeros(d_model)})
    number = save_to_book(book, "tc", d, model=ts1l)
    r = client.get("/api/graph.json", params={"text": PROMPT, "features": "tc", "nodes": "60"})
    assert r.status_code == 200, r.text
    g = r.json()
    ref = to_json(attribute(ts1l, PROMPT, max_nodes=60, transcoders=book_transcoders(book, ["tc"], ts1l.cfg)))
    assert [n["id"] for n in g["nodes"]] == [n["id"] for n in ref["nodes"]]
    feats = [n for n in g["nodes"] if n["kind"] == "feature"]
    assert feats and all(n["link"] == f"/feature/{number}/{n['index']}" for n in feats)
    assert not any(n["kind"] == "neuron" for n in g["nodes"])
    page = client.get("/prompt", params={"text": PROMPT, "features": "tc"})
    assert page.status_code == 200 and 'value="tc"' in page.text and "cb-feature" in page.text
    bad = client.get("/prompt", params={"text": PROMPT, "features": "nope"})
    assert bad.status_code == 400 and "no dictionary" in bad.text


@pytest.mark.parametrize("params, message", [
    ({"text": PROMPT, "target": " two words"}, "not one"),
    ({"text": PROMPT, "pos": "999"}, "outside the prompt"),
    ({"text": PROMPT, "pos": "x"}, "pos must be an integer"),
    ({"text": PROMPT, "ablate": "neuron/0/99999"}, "does not exist"),
    ({"text": PROMPT, "ablate": "bogus"}, "cannot"),
    ({"text": "x" * 5000}, "limit is 4000"),
])
def test_prompt_bad_input_is_explained(client, params, message):
    r = client.get("/prompt", params=params)
    assert r.status_code == 400 and message in r.text


def test_prompt_needs_a_model(book):
    c = TestClient(create_app(book), base_url="http://127.0.0.1")
    r = c.get("/prompt", params={"text": "hi"})
    assert r.status_code == 404 and "needs a model" in r.text
    assert "id=\"nav-prompt\"" not in c.get("/").text


def test_graph_renders_click_navigates_and_ablation_shows_change(browser, book, ts1l):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    g = attribute(ts1l, PROMPT)
    neuron = next(n for n in g.nodes if n.kind == "neuron")
    book.set_label("neuron", neuron.layer, neuron.index, label="graph neuron")
    with live_server(create_app(book, model=ts1l)) as url:
        goto(browser, url + "/prompt", "#text")
        browser.find_element(By.ID, "text").send_keys(PROMPT)
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#graph svg .cb-node"))
        nodes = browser.find_elements(By.CSS_SELECTOR, "#graph svg .cb-node")
        assert len(nodes) == len(g.nodes)
        assert "graph neuron" in browser.find_element(By.ID, "graph").text
        # right-click a neuron: ablate it and re-run; the page shows the same change as graph.ablate
        sel = f"#graph svg .cb-node[data-id='{neuron.id}']"
        ActionChains(browser).context_click(browser.find_element(By.CSS_SELECTOR, sel)).perform()
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "ablation-delta"))
        res = ablate(ts1l, PROMPT, [neuron.id], g.target, pos=g.pos)
        assert browser.find_element(By.ID, "ablation-delta").text == f"{res.delta:+.4f}"
        # click the node: its neuron page opens
        browser.find_element(By.CSS_SELECTOR, sel).click()
        WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"/neuron/{neuron.layer}/{neuron.index}"))
        assert wait_css(browser, "#unit-key")[0].text == f"N{neuron.layer}.{neuron.index}"
        assert browser.find_element(By.ID, "label").get_attribute("value") == "graph neuron"
