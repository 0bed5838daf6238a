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

import pytest

CHROMIUM = os.environ.get("CIRCUITBOOK_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CIRCUITBOOK_CHROMEDRIVER", "/usr/bin/chromedriver")


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
