"""`circuitbook graph --save / --prune` and `circuitbook graphs` end to end on ts-1l-dev."""

from __future__ import annotations

import json

import pytest

from circuitbook.book import Book
from circuitbook.cli import main

PROMPT = "Once upon a time, there was a dog named Lily. She"


def test_save_prune_group_test_export(ts1l_dir, tmp_path, capsys):
    b = tmp_path / "b.db"
    Book.open(b).close()
    m = str(ts1l_dir)
    assert main(["graph", m, PROMPT, "--book", str(b), "--save", "demo", "--prune", "--qk"]) == 0
    out = capsys.readouterr().out
    assert "token-token positional" in out
    assert "retained influence" in out and "completeness" in out and "saved graph 'demo'" in out
    assert main(["graph", m, PROMPT, "--book", str(b), "--save", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already saved" in err and "--overwrite" in err
    assert main(["graph", m, PROMPT, "--book", str(b), "--save", "demo", "--prune", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["graphs", str(b), "list"]) == 0 and "demo" in capsys.readouterr().out
    assert main(["graphs", str(b), "group", "demo", "--auto"]) == 0
    groups = capsys.readouterr().out
    assert main(["graphs", str(b), "group", "demo", "--add", "ghost", "neuron/0/1/99"]) == 2
    assert "not in the graph" in capsys.readouterr().err
    svg = tmp_path / "s.svg"
    assert main(["graphs", str(b), "show", "demo", "--grouped", "--svg", str(svg)]) == 0
    assert svg.read_text().startswith("<svg")
    first = groups.split(" (")[0]
    assert first and "(source)" in groups
    assert main(["graphs", str(b), "hypothesis", "demo", "the group drives ' was'", "--supernode", first,
                 "--threshold", "0.5"]) == 0
    assert "hypothesis 1" in capsys.readouterr().out
    assert main(["graphs", str(b), "test", "demo", "--hypothesis", "1", "--model", m]) == 0
    out = capsys.readouterr().out
    assert ("supported" in out or "refuted" in out) and "delta" in out
    assert main(["graphs", str(b), "recompute", "demo", "--model", m]) == 0
    assert "same model" in capsys.readouterr().out
    j = tmp_path / "ct.json"
    assert main(["graphs", str(b), "export", "demo", str(j)]) == 0
    d = json.loads(j.read_text())
    assert d["qParams"]["supernodes"] and d["metadata"]["prompt"] == PROMPT
    # the logit node carries the target's probability, as transformers computes it on the same weights
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logit = next(n for n in d["nodes"] if n["is_target_logit"])
    hf, tok = AutoModelForCausalLM.from_pretrained(m).eval(), AutoTokenizer.from_pretrained(m)
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(PROMPT)])
    with torch.no_grad():
        probs = hf(ids).logits[0, -1].float().softmax(-1)
    assert logit["token_prob"] == pytest.approx(float(probs.max()), rel=1e-3)
    assert f'(p={logit["token_prob"]:.3f})' in logit["clerp"]
    assert main(["graphs", str(b), "import", str(j), "back"]) == 0
    capsys.readouterr()
    assert main(["graphs", str(b), "show", "back"]) == 0
