"""Small models and corpora for the scan tests: a random 2-layer GPT-Neo (one global, one local layer)
with the real GPT-2 tokenizer, and the first stories of the shared TinyStories sample."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny(ts1l_dir):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from circuitbook.model import Tokenizer, from_hf_model

    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=32, num_layers=2, attention_types=[[["global", "local"], 1]],
                       num_heads=4, intermediate_size=64, max_position_embeddings=128, window_size=8)
    tok = Tokenizer.from_dir(ts1l_dir, bos_id=50256)
    return from_hf_model(GPTNeoForCausalLM(cfg).eval(), tok, source="tiny-random-gpt-neo")


@pytest.fixture(scope="session")
def tiny_dir(tiny, ts1l_dir, tmp_path_factory):
    from circuitbook.model import save_hf

    return save_hf(tiny, tmp_path_factory.mktemp("tiny"), tokenizer_from=ts1l_dir)


@pytest.fixture(scope="session")
def stories(stories_path):
    from circuitbook.corpus import read_stories

    out = []
    for s in read_stories(stories_path):
        out.append(s)
        if len(out) == 24:
            return out
    return out


@pytest.fixture(scope="session")
def stories_file(stories, tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "stories.txt"
    p.write_text("\n<|endoftext|>\n".join(stories), encoding="utf-8")
    return p


def dump(book) -> dict:
    """Every scan result table, sorted, for equality checks between books."""
    from circuitbook.book.scan import RESULT_TABLES

    return {t: sorted(tuple(r) for r in book.conn.execute(f"SELECT * FROM {t}")) for t in RESULT_TABLES}
