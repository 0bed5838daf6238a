"""Free-text explanations from any OpenAI-compatible chat endpoint (``POST {url}/chat/completions``).

The prompt shows a unit's top and quantile example windows (the focus token marked, activations as
``token(value)``) and asks for one sentence plus, optionally, the words it fires on and promotes, as JSON
``{"sentence": ..., "fires_on": [...], "promotes": [...]}``. A reply with words becomes a program (scored
like any other); a reply without stays free text. The API key comes from the environment
(``CIRCUITBOOK_LLM_KEY``, else ``OPENAI_API_KEY``; none is fine for a local server).

Failure is bounded and loud: every request has a ``timeout`` (connect and each read), the whole call a
deadline, and an unreachable / hanging / malformed endpoint raises :class:`LLMError` naming the URL.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

from ..errors import CircuitbookError
from ..handcraft.spec import OutputRule, TokenSet
from .program import ActivationProgram, Clause


class LLMError(CircuitbookError, RuntimeError):
    """The LLM endpoint could not be used (unreachable, timed out, bad reply)."""


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def chat(url: str, model: str, messages: list[dict], timeout: float = 30.0, api_key: str | None = None) -> str:
    """One chat completion; returns the reply text or raises LLMError within about ``timeout`` seconds."""
    key = api_key if api_key is not None else os.environ.get("CIRCUITBOOK_LLM_KEY") or os.environ.get("OPENAI_API_KEY")
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(endpoint(url), data=body, headers=headers, method="POST")
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read(1 << 22)
    except urllib.error.HTTPError as e:
        raise LLMError(f"LLM endpoint {endpoint(url)} answered HTTP {e.code}: {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
        why = getattr(e, "reason", e)
        raise LLMError(f"LLM endpoint {endpoint(url)} unreachable or too slow "
                       f"({why}; gave up after {time.monotonic() - t0:.1f} s)") from None
    try:
        return json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError(f"LLM endpoint {endpoint(url)} sent no chat completion (got {raw[:200]!r})") from None


def _window_text(tokens, values, focus, strs) -> str:
    out = []
    for i, (t, v) in enumerate(zip(tokens, values)):
        if t < 0:
            continue
        s = strs[t].replace("Ġ", " ") if t < len(strs) else f"<{t}>"
        out.append(f"[[{s}]]({v:.2f})" if i == focus else (f"{s}({v:.2f})" if v == v and abs(v) > 0.05 else s))
    return "".join(out)


def prompt(unit_key: str, examples, strs: list[str], n: int = 12) -> list[dict]:
    """The chat messages for one unit from its examples (scan Example objects)."""
    lines = [f"{i + 1}. {_window_text(ex.tokens, ex.values, ex.focus, strs)}" for i, ex in enumerate(examples[:n])]
    return [
        {"role": "system", "content": "You explain neurons of a small language model trained on children's stories. "
                                      "Reply with JSON only: {\"sentence\": one sentence, \"fires_on\": [words], "
                                      "\"promotes\": [words]}."},
        {"role": "user", "content": f"Unit {unit_key}. Text windows where it activates; the [[marked]] token is the "
                                    "focus and numbers in brackets are activations:\n" + "\n".join(lines)},
    ]


def parse_reply(text: str) -> tuple[str, ActivationProgram | None]:
    """(sentence, program or None) from a reply: JSON as asked, else the whole text as the sentence."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").split("\n", 1)[-1]
    try:
        d = json.loads(s[s.index("{"): s.rindex("}") + 1])
    except ValueError:
        return text.strip()[:500], None
    sentence = str(d.get("sentence") or text).strip()[:500]
    fires = [str(w) for w in d.get("fires_on") or [] if str(w).strip()]
    prom = [str(w) for w in d.get("promotes") or [] if str(w).strip()]
    if not fires:
        return sentence, None
    out = OutputRule(promote=TokenSet(words=prom)) if prom else None
    return sentence, ActivationProgram([Clause(scale=1.0, tokens=TokenSet(words=fires))], 0.0, out)


def explain_with_llm(book, url: str, model: str, units: list[tuple[str, int, int]], timeout: float = 30.0,
                     deadline: float = 600.0, progress: bool = False) -> int:
    """Append an "llm:<model>" explanation for each activation unit in ``units``; returns how many.
    Stops with LLMError at the first failure or when ``deadline`` seconds are spent."""
    from tqdm.auto import tqdm

    from ..book import explanations as be
    from ..book import scan as bs
    from ..units import unit_kind

    strs = book.token_strs()
    t0 = time.monotonic()
    rows = []
    try:
        for kind, layer, idx in tqdm(units, desc="llm", unit="unit", disable=not progress):
            if time.monotonic() - t0 > deadline:
                raise LLMError(f"LLM explanations stopped after the {deadline:.0f} s deadline ({len(rows)} done)")
            if unit_kind(kind).stats != "activation":
                continue
            exs = bs.top_examples(book, kind, layer, idx, 8)
            for band in list(bs.quantile_examples(book, layer, idx, 1).values())[:4]:
                exs += band
            if not exs:
                continue
            reply = chat(url, model, prompt(unit_kind(kind).key(layer, idx), exs, strs), timeout)
            sentence, prog = parse_reply(reply)
            rows.append((kind, layer, idx, f"llm:{model}", sentence, prog.to_dict() if prog else None,
                         {"stage": "explain", "llm": endpoint(url), "examples": len(exs)}))
    finally:
        be.add_explanations(book, rows)  # keep what came back before a failure
    return len(rows)
