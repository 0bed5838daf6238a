"""The workbench in a real headless Chromium: pages render, edits persist, book text stays text,
concurrent writes lose nothing."""

from __future__ import annotations

import pytest

from circuitbook.book import Book
from circuitbook.web import create_app

from .conftest import goto, live_server, wait_css

XSS = "<script>window.cbPwned=1</script><img src=x onerror=\"window.cbPwned=2\"><b>bold</b> & co"


@pytest.fixture(scope="module")
def demo_model():
    from circuitbook.demo import build_demo

    return build_demo().model


@pytest.fixture()
def book_path(tmp_path, demo_model):
    b = Book.open(tmp_path / "book.db")
    b.bind_model(demo_model)
    b.set_label("neuron", 0, 7, label=XSS, notes=XSS)
    b.close()
    return tmp_path / "book.db"


def _by_id(driver, i):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, i)


def _wait(driver, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def test_label_edit_persists_after_reload_and_restart(browser, book_path):
    from selenium.webdriver.support.ui import Select

    with live_server(create_app(Book.open(book_path))) as url:
        goto(browser, f"{url}/neuron/0/12", "#label")
        label = _by_id(browser, "label")
        label.clear()
        label.send_keys("fires on 'the' <and> friends")
        _by_id(browser, "notes").send_keys("hypothesis: article detector")
        Select(_by_id(browser, "status")).select_by_value("hypothesis")
        _by_id(browser, "save").click()
        _wait(browser, lambda d: _by_id(d, "saved").text == "saved")
        assert _by_id(browser, "title-label").text == "fires on 'the' <and> friends"
        goto(browser, f"{url}/neuron/0/12", "#label")
        assert _by_id(browser, "label").get_attribute("value") == "fires on 'the' <and> friends"
        assert _by_id(browser, "notes").get_attribute("value") == "hypothesis: article detector"
        assert Select(_by_id(browser, "status")).first_selected_option.get_attribute("value") == "hypothesis"
    # a new server process on the same file (a fresh Book handle): the edit is in the book
    with live_server(create_app(Book.open(book_path))) as url:
        goto(browser, f"{url}/neuron/0/12", "#label")
        assert _by_id(browser, "label").get_attribute("value") == "fires on 'the' <and> friends"
        assert "N0.12" in goto(browser, f"{url}/?q=article", "#units")[0].text
    hist = Book.open(book_path).label_history("neuron", 0, 12)
    assert len(hist) == 1 and hist[0]["status"] == "hypothesis"


def test_book_text_is_shown_as_text(browser, book_path):
    with live_server(create_app(Book.open(book_path))) as url:
        for page in (f"{url}/neuron/0/7", f"{url}/?label=labelled"):
            goto(browser, page, "main")
            assert browser.execute_script("return window.cbPwned === undefined")
            assert browser.execute_script("return document.querySelectorAll('main img, main b').length") == 0
        goto(browser, f"{url}/neuron/0/7", "#title-label")
        assert _by_id(browser, "title-label").text == XSS
        assert browser.title == f"N0.7 {XSS} · circuitbook"
        assert _by_id(browser, "notes").get_attribute("value") == XSS


def test_50_concurrent_label_writes_lose_nothing(browser, book_path):
    with live_server(create_app(Book.open(book_path))) as url:
        goto(browser, f"{url}/neuron/0/20", "#label-form")
        results = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const api = document.getElementById('label-form').getAttribute('data-api');
            const posts = [];
            for (let i = 0; i < 50; i++) {
              posts.push(fetch(api, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                     body: JSON.stringify({label: 'w' + i, notes: 'n' + i})})
                         .then(r => r.status));
            }
            Promise.all(posts).then(done, e => done(String(e)));
        """)
        assert results == [200] * 50
        goto(browser, f"{url}/neuron/0/20", "#label")
        shown = _by_id(browser, "label").get_attribute("value")
    book = Book.open(book_path)
    hist = book.label_history("neuron", 0, 20)
    assert sorted(h["label"] for h in hist) == sorted(f"w{i}" for i in range(50))
    final = book.neuron(0, 20)
    # the final state is the last write in the log, whole (label and notes from the same request)
    assert final.label == hist[-1]["label"] == shown
    assert final.notes == "n" + final.label[1:]


def test_index_renders_and_navigates(browser, book_path):
    from selenium.webdriver.common.by import By

    with live_server(create_app(Book.open(book_path))) as url:
        rows = goto(browser, url + "/", "#units tbody tr")
        assert len(rows) == 64 + 4
        browser.find_element(By.LINK_TEXT, "H0.3").click()
        _wait(browser, lambda d: d.current_url.endswith("/head/0/3"))
        assert wait_css(browser, "#unit-key")[0].text == "H0.3"
        assert "no neuron 999" in goto(browser, url + "/neuron/0/999", "#error-message")[0].text


def test_static_export_browses_from_disk(browser, book_path, tmp_path):
    from selenium.webdriver.common.by import By

    from circuitbook.web import export_site

    Book.open(book_path).set_label("neuron", 0, 33, label="article detector", status="supported")
    out = tmp_path / "site"
    export_site(Book.open(book_path, readonly=True), out, progress=False)
    goto(browser, (out / "index.html").as_uri(), "#units tbody tr")
    visible = lambda: [r for r in browser.find_elements(By.CSS_SELECTOR, "#units tbody tr") if r.is_displayed()]  # noqa: E731
    assert len(visible()) == 64 + 4
    browser.find_element(By.ID, "q").send_keys("article")  # filters in the page, no server
    assert [r.find_element(By.TAG_NAME, "a").text for r in visible()] == ["N0.33"]
    assert browser.find_element(By.ID, "shown-count").text == "1"
    browser.find_element(By.LINK_TEXT, "N0.33").click()
    _wait(browser, lambda d: d.current_url.endswith("/neuron/0/33.html"))
    assert wait_css(browser, "#label-text")[0].text == "article detector"
    assert browser.execute_script("return getComputedStyle(document.body).margin") == "0px"  # stylesheet loaded
    browser.find_element(By.ID, "next").click()
    _wait(browser, lambda d: d.current_url.endswith("/neuron/0/34.html"))
    goto(browser, (out / "neuron" / "0" / "7.html").as_uri(), "#label-text")  # the markup label, from disk
    assert browser.execute_script("return window.cbPwned === undefined")
    assert browser.find_element(By.ID, "label-text").text == XSS
