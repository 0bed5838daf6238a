"""Saved graphs on the server (ts-1l-dev): Save button, index listing, group, annotate, test, export, and the
same again after a server restart — in the test client and in headless Chromium."""

from __future__ import annotations

import html

import pytest
from fastapi.testclient import TestClient

from circuitbook.book import Book
from circuitbook.book.graphs import experiments, hypotheses, saved_graphs
from circuitbook.graph import ablate
from circuitbook.graph.saved import load
from circuitbook.web import create_app

from .conftest import goto, live_server, wait_css

PROMPT = "Once upon a time, there was a dog named Lily. She"
SCREENSHOT = "/tmp/circuitbook-supernode-view.png"


@pytest.fixture()
def book(tmp_path, ts1l):
    b = Book.open(tmp_path / "book.db")
    b.bind_model(ts1l)
    return b


def _client(book, model):
    return TestClient(create_app(book, model=model), base_url="http://127.0.0.1")


def test_save_group_hypothesis_test_in_client(book, ts1l, tmp_path):
    c = _client(book, ts1l)
    form = {"name": "demo", "text": PROMPT, "pos": "-1", "nodes": "40", "edges": "150", "prune": "1"}
    r = c.post("/api/graphs/save", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/graph/demo"
    r = c.post("/api/graphs/save", data=form)
    assert r.status_code == 400 and "already saved" in r.text
    assert c.post("/api/graphs/save", data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    assert 'href="/graph/demo"' in c.get("/").text
    assert c.post("/graph/demo/group", data={"auto": "1"}).status_code == 200
    bad = c.post("/graph/demo/group", data={"supernode": "ghost", "member": "neuron/0/1/99"})
    assert bad.status_code == 400 and "not in the graph" in bad.text
    s = load(book, "demo")
    assert s.supernodes and s.settings["prune"]["node_share"] == 0.8
    sn = s.supernodes[0]
    r = c.post("/graph/demo/hypothesis", data={"text": "the group drives the prediction", "supernode": sn.name,
                                               "how": "zero", "expect": "decrease", "threshold": "0.5"})
    assert r.status_code == 200
    [h] = hypotheses(book, s.id)
    assert c.post(f"/graph/demo/hypothesis/{h['id']}/test").status_code == 200
    [e] = experiments(book, h["id"])
    want = ablate(ts1l, s.graph.tokens, sn.members, s.graph.target)
    assert e["result"]["delta"] == pytest.approx(want.delta, abs=1e-4)
    assert e["verdict"] == ("supported" if want.delta <= -0.5 else "refuted")
    ct = c.get("/graph/demo/export.json").json()
    assert ct["qParams"]["supernodes"][0][0] == sn.name
    # a fresh server on the same file, no model: everything is still there
    page = _client(Book.open(book.path, create=False), None).get("/graph/demo?view=supernodes").text
    assert html.escape(sn.name) in page and "the group drives" in page and f"{e['result']['delta']:+.4f}" in page
    assert 'class="cb-node cb-supernode"' in page


def test_browser_save_group_annotate_test_restart(browser, tmp_path, ts1l):
    from selenium.webdriver.common.by import By

    path = tmp_path / "web.db"
    Book.open(path).bind_model(ts1l)
    with live_server(create_app(Book.open(path, create=False), model=ts1l)) as url:
        goto(browser, f"{url}/prompt?text={PROMPT}", "#save-name", timeout=60)
        browser.find_element(By.ID, "save-name").send_keys("demo")
        browser.find_element(By.ID, "save-prune").click()
        browser.find_element(By.ID, "save-graph").click()
        assert wait_css(browser, "#graph-name", 60)[0].text == "demo"
        browser.find_element(By.ID, "auto-group").click()
        assert wait_css(browser, "#supernodes tr.supernode")
        browser.find_element(By.ID, "hyp-text").send_keys("the heads reading ' upon' drive ' was'")
        browser.find_element(By.ID, "hyp-threshold").clear()
        browser.find_element(By.ID, "hyp-threshold").send_keys("0.25")
        browser.find_element(By.ID, "add-hypothesis").click()
        wait_css(browser, ".run-test")[0].click()
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        def verdict_of(driver):  # the test's POST reloads the page: read the status once the new page is up
            try:
                text = driver.find_element(By.CSS_SELECTOR, ".hypothesis .status").text
            except StaleElementReferenceException:
                return False
            return text if text in ("supported", "refuted") else False

        verdict = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,)).until(verdict_of)
        assert verdict in ("supported", "refuted")
        browser.refresh()
        assert wait_css(browser, ".experiment")[0].text.startswith(verdict)
    with live_server(create_app(Book.open(path, create=False), model=ts1l)) as url:  # a server restart
        goto(browser, f"{url}/", "a.saved-graph")[0].click()
        assert wait_css(browser, "#saved-graph")[0].get_attribute("data-view") == "supernodes"
        assert browser.find_elements(By.CSS_SELECTOR, "#saved-graph .cb-supernode")
        assert browser.find_element(By.CSS_SELECTOR, ".experiment").text.startswith(verdict)
        assert "the heads reading" in browser.find_element(By.CSS_SELECTOR, ".hypothesis").text
        browser.find_element(By.ID, "saved-graph").screenshot(SCREENSHOT)
    assert [g["name"] for g in saved_graphs(Book.open(path, readonly=True))] == ["demo"]
