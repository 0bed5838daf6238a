"""circuitbook serve: a real process on 127.0.0.1, pages served from the book; bad input exits 2."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from circuitbook.book import Book
from circuitbook.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def book_path(tmp_path, ts1l):
    b = Book.open(tmp_path / "book.db")
    b.bind_model(ts1l)
    b.set_label("neuron", 0, 896, label="pronouns -> verbs")
    b.close()
    return tmp_path / "book.db"


def test_serve_process_binds_loopback_and_serves(book_path, ts1l_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "circuitbook.cli", "serve", str(book_path), "--port", str(port),
                             "--model", str(ts1l_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first
        deadline = time.time() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/neuron/0/896", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, "server did not come up"
                time.sleep(0.2)
        assert r.status_code == 200 and "pronouns -&gt; verbs" in r.text
        r = httpx.get(f"http://127.0.0.1:{port}/prompt", params={"text": "Once upon a time"}, timeout=60)
        assert r.status_code == 200 and 'id="graph"' in r.text
        # listening on loopback only: the socket's address is 127.0.0.1
        if shutil.which("ss"):  # iproute2; where it is missing, the printed URL above is the check
            out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                assert all("127.0.0.1:" in line for line in out.stdout.strip().splitlines())
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_bad_input(tmp_path, book_path, ts656k_dir, capsys):
    assert main(["serve", str(tmp_path / "nope.db")]) == 2
    assert "no book at" in capsys.readouterr().err
    assert main(["serve", str(book_path), "--port", "70000"]) == 2
    assert main(["serve", str(book_path), "--model", str(ts656k_dir)]) == 2  # not the book's model
    assert "not " in capsys.readouterr().err
