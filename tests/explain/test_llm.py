"""The LLM client against real local HTTP servers started here: a working one, a closed port, a hanging one."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from circuitbook.explain.llm import LLMError, chat, explain_with_llm, parse_reply


class _Handler(BaseHTTPRequestHandler):
    reply = json.dumps({"sentence": "fires on pronouns", "fires_on": ["He", "She"], "promotes": ["ran"]})
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": _Handler.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_chat_and_explanations_from_a_local_server(server, monkeypatch, tmp_path):
    monkeypatch.setenv("CIRCUITBOOK_LLM_KEY", "sk-test")
    assert "pronouns" in chat(server, "tiny", [{"role": "user", "content": "hi"}], timeout=5)
    path, auth, body = _Handler.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "tiny"
    sentence, prog = parse_reply(_Handler.reply)
    assert sentence == "fires on pronouns" and prog.clauses[0].tokens.words == ["He", "She"]
    assert parse_reply("just words")[1] is None

    from circuitbook.book import Book
    from circuitbook.book import explanations as be
    from circuitbook.demo import build_demo
    from circuitbook.scan import scan_corpus

    demo = build_demo(seed=0, d_mlp=8, n_stories=20)
    book = Book.open(tmp_path / "b.db")
    scan_corpus(demo.model, demo.stories, book, k=4, progress=False)
    n = explain_with_llm(book, server, "tiny", [("neuron", 0, 1), ("neuron", 0, 2)], timeout=5)
    assert n == 2
    cur = be.current(book)[("neuron", 0, 1)]
    assert cur["author"] == "llm:tiny" and cur["program"]["input"][0]["tokens"] == {"words": ["He", "She"]}
    prompt = _Handler.seen[-1][2]["messages"][-1]["content"]
    assert "[[" in prompt and "N0.2" in prompt  # examples with the focus token marked


def test_unreachable_endpoint_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(LLMError, match="unreachable"):
        chat(f"http://127.0.0.1:{port}/v1", "m", [], timeout=3)
    assert time.monotonic() - t0 < 3


def test_hanging_endpoint_times_out():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts connections, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="too slow"):
            chat(f"http://127.0.0.1:{s.getsockname()[1]}", "m", [], timeout=1.0)
        assert time.monotonic() - t0 < 5
    finally:
        s.close()
