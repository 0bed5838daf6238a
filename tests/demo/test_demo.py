"""The embedded demo: its planted mechanisms do what the docs say, and `circuitbook demo` runs."""

from __future__ import annotations

import subprocess
import sys

import torch

from circuitbook.demo import build_demo


def test_planted_neurons_fire_on_their_class_and_promote_theirs():
    d = build_demo(seed=3)
    m, t = d.model, d.truth
    assert len({t["pronoun_verb"], t["article_noun"], t["search"]}) == 3
    toks = m.to_tokens("Once upon a time, there was a dog named Tom. He looked for the ball")
    strs = [m.tokenizer.token_str(i) for i in toks[0]]
    post = m.run(toks, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"][0]
    for name, words in (("pronoun_verb", {" He"}), ("article_noun", {" a", " the"}), ("search", {" looked"})):
        fired = {strs[i] for i in (post[:, t[name]] > 1.0).nonzero().flatten().tolist()}
        assert fired == words, name  # fires on its class and nowhere else
    # output side: W_out[n] @ W_U ranks the promoted class on top
    w = m.weights
    eff = w.W_out[0, t["pronoun_verb"]] @ w.W_U
    top = set(eff.topk(len(t["rules"]["pronoun_verb"]["writes"])).indices.tolist())
    assert top == set(t["rules"]["pronoun_verb"]["writes"])


def test_copy_head_attends_to_names():
    d = build_demo()
    m = d.model
    toks = m.to_tokens("Once upon a time, there was a cat named Mia. She saw the dog")
    pat = m.run(toks, ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"][0, d.truth["copy_head"], -1]
    assert m.tokenizer.token_str(int(toks[0, int(pat.argmax())])) == " Mia" and pat.max() > 0.8


def test_demo_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "circuitbook.cli", "demo", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "model.safetensors").exists() and (tmp_path / "d" / "site" / "index.html").exists()
    # every stage finds what was planted: scan, circuits, typing, concept search, copy head
    assert "MISS" not in out.stdout, out.stdout
    assert out.stdout.count("ok ") >= 13, out.stdout
    assert "loss recovered" in out.stdout and "circuitbook serve" in out.stdout
