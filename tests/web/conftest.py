"""Fixtures for the web tests: a live uvicorn server on a free 127.0.0.1 port and a headless Chromium.

Chromium is Debian's ``chromium`` + ``chromium-driver`` (apt), driven by Selenium with an explicit
driver path (Selenium never downloads anything). Without them the browser tests skip locally and
fail under CI (``CI`` set), so a CI that forgot to install them cannot pass silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
import warnings

import pytest

CHROMIUM = os.environ.get("CIRCUITBOOK_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CIRCUITBOOK_CHROMEDRIVER", "/usr/bin/chromedriver")


def wait_css(driver, css, timeout=30):
    """The elements matching `css` once they are on the page (after a get, a click that navigates, a
    form POST); fails naming the URL and showing what the page says instead (an error page, a blank tab)."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, css) or False)
    except TimeoutException:
        body = driver.execute_script("return document.body ? document.body.innerText : '(no body)'")
        raise AssertionError(f"{css!r} not on {driver.current_url} after {timeout}s; "
                             f"title {driver.title!r}; page text: {body[:1500]!r}") from None


def goto(driver, url, css, timeout=30):
    """Open `url` and wait for `css` on it; a page that came up without it (a renderer hiccup of the
    headless browser) is loaded once more before failing with what it showed."""
    driver.get(url)
    try:
        return wait_css(driver, css, timeout)
    except AssertionError as first:
        warnings.warn(f"reloading once: {first}")
        driver.get(url)
        return wait_css(driver, css, timeout)


@contextlib.contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (fresh profile; no network besides our server)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("selenium not installed (pip install selenium)")
        pytest.skip("selenium not installed")
    profile = tempfile.mkdtemp(prefix="cb-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
