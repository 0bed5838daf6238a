"""Real commands with stderr piped (a non-terminal, as in CI or ``| tee``): progress comes as a few plain
lines and a summary per bar, never a carriage-return frame."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import circuitbook

SRC = Path(circuitbook.__file__).resolve().parents[1]  # the checkout under test (src/)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "circuitbook.cli", *argv], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    return r


def _bars(stderr: str) -> dict[str, list[str]]:
    """Progress lines per bar ("desc: count unit ..."), in order."""
    bars: dict[str, list[str]] = {}
    for line in stderr.splitlines():
        m = re.match(r"^([\w ]+): \d+(/\d+)? \w+", line)
        if m:
            bars.setdefault(m.group(1), []).append(line)
    return bars


def test_handcraft_and_export_print_plain_bounded_progress(tmp_path):
    from circuitbook.demo import build_demo

    demo = build_demo(seed=0, d_mlp=32, n_stories=120)
    d = demo.write(tmp_path / "demo")
    truth = demo.truth
    (tmp_path / "classes.json").write_text(json.dumps(truth["classes"]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: planted\nneurons:\n  - name: pron->verb\n    replaces: {truth['pronoun_verb']}\n"
                    f"    input: {{class: PRON}}\n    output: {{promote: {{ids: "
                    f"{truth['rules']['pronoun_verb']['writes']}}}}}\n")
    book = tmp_path / "b.db"
    hc = _cli("handcraft", str(spec), "--model", str(d), "--corpus", str(d / "stories.txt"), "--book", str(book),
              "--classes", str(tmp_path / "classes.json"), "--stories", "80", "--batch-size", "4")
    ex = _cli("export", str(book), "--html", str(tmp_path / "site"))
    for r in (hc, ex):
        assert "\r" not in r.stderr and "\r" not in r.stdout
    bars = _bars(hc.stderr) | _bars(ex.stderr)
    assert {"evaluate", "export"} <= set(bars), hc.stderr + ex.stderr  # the fit (unit means) runs quietly
    for name, lines in bars.items():
        assert 1 <= len(lines) <= 11, (name, lines)  # at most one line per 10% of the total, plus the summary
        assert "done in" in lines[-1] and all("done in" not in ln for ln in lines[:-1]), lines
    n_pages = int(re.search(r"wrote (\d+) pages", ex.stdout).group(1))
    assert bars["export"][-1].startswith(f"export: {n_pages - 1}/{n_pages - 1} page (100%), done in")
