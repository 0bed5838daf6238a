"""Loading from directories and the hub cache (offline), tokenizers, and clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from circuitbook.demo import build_demo
from circuitbook.model import ModelLoadError, Tokenizer, load_model


def test_gpt2_tokenizer_from_vocab_and_merges(gpt2_tokenizer_dir, tmp_path):
    shutil.copy(gpt2_tokenizer_dir / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(gpt2_tokenizer_dir / "vocab.bpe", tmp_path / "merges.txt")
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert tok.encode("The cat sat on the") == [464, 3797, 3332, 319, 262]
    assert tok.bos_id == 50256 and tok.vocab_size == 50257
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.token_str(257) == " a"


def test_encoder_json_names_work_too(gpt2_tokenizer_dir):
    tok = Tokenizer.from_dir(gpt2_tokenizer_dir)
    assert tok.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert tok.decode(tok.encode("Lily's dog, \"Max\", ran!")) == "Lily's dog, \"Max\", ran!"


def test_ts1l_tokenizer_json_agrees_with_bpe_files(ts1l, gpt2_tokenizer_dir, stories_path):
    ref = Tokenizer.from_dir(gpt2_tokenizer_dir)
    text = stories_path.read_text(encoding="utf-8-sig")[:20000]
    assert ts1l.tokenizer.encode(text) == ref.encode(text)
    assert ts1l.to_tokens("Once upon a time").tolist() == [[50256, 7454, 2402, 257, 640]]


def _fake_hub_cache(tmp_path, repo="someone/tiny-demo"):
    """Lay out a huggingface_hub cache entry by hand (what a previous online download leaves)."""
    cache = tmp_path / "hub"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    build_demo().write(snap)
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir(parents=True)
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    return cache


def test_hub_id_loads_from_cache_offline(tmp_path, monkeypatch):
    cache = _fake_hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    m = load_model("someone/tiny-demo")
    assert m.cfg.arch == "gpt_neo" and m.tokenizer.bos_id == 0
    ref = build_demo().model
    toks = torch.tensor([[0, 5, 6, 7]])
    assert torch.allclose(m.run(toks)["logits"], ref.run(toks)["logits"], atol=1e-5)


def test_hub_id_offline_not_cached_is_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_model("roneneldan/TinyStories-1Layer-21M")


@pytest.mark.parametrize("source, msg", [("/no/such/dir", "not a model directory"), ("a/b/c", "not a model directory")])
def test_bad_sources(source, msg):
    with pytest.raises(ModelLoadError, match=msg):
        load_model(source)


def test_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, '
                                          '"vocab_size": 10}')
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(tmp_path)


def test_pytorch_model_bin(tmp_path):
    """Older hub repos (like the TinyStories ones) may ship only pytorch_model.bin."""
    from safetensors.torch import load_file

    d = build_demo()
    d.write(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    m = load_model(tmp_path)
    assert torch.equal(m.weights.W_in, d.model.weights.W_in)


def test_fingerprint_does_not_depend_on_the_thread_count(ts1l):
    """ts-1l-dev's fingerprint differed between 1 and 2 torch threads (torch's parallel sum changes its last
    digits), so `dictionary train` (2 threads) wrote a book that `scan` (1 thread) refused as another model."""
    before = torch.get_num_threads()
    try:
        prints = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            prints.add(ts1l.fingerprint())
    finally:
        torch.set_num_threads(before)
    assert len(prints) == 1
    W_U = ts1l.weights.W_U.clone()
    W_U[7, 11] += 1e-3  # one weight off the sampled grid still changes it
    assert ts1l.with_weights(ts1l.weights.replace(W_U=W_U)).fingerprint() not in prints
