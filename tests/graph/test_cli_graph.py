"""`circuitbook graph` end to end on ts-1l-dev."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from circuitbook.cli import main
from circuitbook.graph import from_json


def test_cli_graph(ts1l_dir, tmp_path, capsys):
    j, s = tmp_path / "g.json", tmp_path / "g.svg"
    rc = main(["graph", str(ts1l_dir), "The cat sat on the", "--token", " mat", "--nodes", "12", "--json", str(j),
               "--svg", str(s), "--ablate", "input/2", "--mode", "mean"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "logit[' mat'] at position 5" in out and "ablating input pos 2 (mean)" in out
    g = from_json(json.loads(j.read_text()))
    assert g.target_str == " mat" and len(g.nodes) == 13
    ET.fromstring(s.read_text())
    assert main(["graph", str(ts1l_dir), "The cat", "--pos", "9"]) == 2
    assert "outside the prompt" in capsys.readouterr().err
