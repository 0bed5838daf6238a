"""Corpus reading (all formats), BOS policy, windows and padding."""

from __future__ import annotations

import json

import pytest
import torch

from circuitbook.corpus import CorpusError, batches, corpus_hash, read_stories, sequences
from circuitbook.demo import demo_tokenizer


def test_tinystories_file(stories_path):
    stories = list(read_stories(stories_path))
    assert len(stories) == 1841
    assert stories[0].startswith("Spot. Spot saw the shiny car")  # BOM stripped
    assert all("<|endoftext|>" not in s for s in stories)


def test_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "One."}) + "\n\n" + json.dumps({"story": "Two."}) + "\n")
    assert list(read_stories(tmp_path / "a.jsonl")) == ["One.", "Two."]
    (tmp_path / "b.txt").write_text("\ufeffFirst story.\nStill first.\n\n\nSecond story.\n")
    assert list(read_stories(tmp_path / "b.txt")) == ["First story.\nStill first.", "Second story."]
    (tmp_path / "c.txt").write_text("A.\n<|endoftext|>\nB.\n\nstill B.\n<|endoftext|>\n")
    assert list(read_stories(tmp_path / "c.txt")) == ["A.", "B.\n\nstill B."]


@pytest.mark.parametrize("content, msg", [('{"text": 3}\n', "'text'"), ("not json\n", "not valid JSON")])
def test_bad_jsonl(tmp_path, content, msg):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=msg):
        list(read_stories(tmp_path / "x.jsonl"))


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        list(read_stories(tmp_path / "nope.txt"))


def test_bos_windows_and_padding():
    tok = demo_tokenizer()
    stories = ["Once upon a time, there was a dog.", "Once upon a time, there was a big red ball named Lily."]
    seqs = list(sequences(stories, tok, max_len=6))
    ids0 = tok.encode(stories[0])
    assert seqs[0] == (0, 0, [0] + ids0[:5]) and seqs[1] == (0, 1, [0] + ids0[5:10])
    assert all(ids[0] == tok.bos_id and len(ids) <= 6 for _, _, ids in seqs)
    flat = [t for s, _, ids in seqs if s == 0 for t in ids[1:]]
    assert flat == ids0  # windows cover the story exactly once
    bs = list(batches(stories, tok, max_len=6, batch_size=3))
    assert sum(b.n_tokens for b in bs) == sum(len(ids) for *_, ids in seqs)
    b = bs[-1]
    assert b.tokens.shape[1] == int(b.mask.sum(1).max()) and torch.all(b.tokens[~b.mask] == 0)


def test_corpus_hash_changes(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    h = corpus_hash(tmp_path / "a.txt")
    (tmp_path / "a.txt").write_text("y")
    assert corpus_hash(tmp_path / "a.txt") != h
