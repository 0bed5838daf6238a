"""book/scan.py: the scan's tables, queries and notebook rendering (corpus text always escaped)."""

import pytest

from circuitbook.book import Book, BookError
from circuitbook.book import scan as q
from circuitbook.scan import scan_corpus


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM
    import torch

    from circuitbook.model import Tokenizer, from_hf_model
    from tests.conftest import asset

    torch.manual_seed(1)
    cfg = GPTNeoConfig(vocab_size=50257, hidden_size=16, num_layers=1, attention_types=[[["global"], 1]],
                       num_heads=2, intermediate_size=8, max_position_embeddings=64)
    model = from_hf_model(GPTNeoForCausalLM(cfg).eval(), Tokenizer.from_dir(asset("ts-1l-dev"), bos_id=50256))
    stories = ["Tom saw a <script>alert('x')</script> & a cat.", "The dog ran. <b>bold</b> \"quoted\"",
               "Once upon a time there was a girl."] * 3
    path = tmp_path_factory.mktemp("store") / "b.db"
    scan_corpus(model, stories, path, k=5, r=2, before=3, after=1, progress=False)
    return Book.open(path)


def test_schema_and_info(book):
    assert book.schema_versions()["scan"] == 2  # 2: scan_unit_stats, scan_unit_token_means
    info = q.scan_info(book)
    assert info["complete"] and info["identity"]["k"] == 5 and info["progress"]["tokens"] > 0


def test_queries(book):
    st = q.neuron_stats(book, 0, 0)
    assert isinstance(st, q.NeuronStats) and len(st.hist_counts) == 128 and len(st.hist_edges) == 129
    top = q.top_examples(book, "neuron", 0, 0)
    assert len(top) == 5 and top[0].rank == 0 and len(top[0].tokens) == 3 + 1 + 1 == len(top[0].values)
    assert len(q.top_examples(book, "neuron", 0, 0, k=2)) == 2
    assert q.top_examples(book, "neuron", 0, 99) == []
    assert q.neuron_stats(book, 0, 99) is None
    assert all(len(v) <= 2 for v in q.quantile_examples(book, 0, 0).values())
    tm = q.token_means(book, 0, 0)
    assert tm and all(t.count >= 3 for t in tm)
    hs = q.head_stats(book, 0, 1)
    assert hs.count == st.count
    assert all(p.mass > 0 for p in q.head_pairs(book, 0, 1))
    assert len(q.unit_table(book, "head")) == 2
    with pytest.raises(BookError):
        q.unit_table(book, "neuron", where="1; DROP TABLE units")
    with pytest.raises(BookError):
        q.unit_table(book, "neuron", order_by="nope")


def test_unit_sections_render_escaped(book):
    u = book.neuron(0, 0)
    assert isinstance(u["scan"], q.ScanSection)
    html = u._repr_html_() + book.head(0, 0)._repr_html_()
    assert "<script>" not in html and "&lt;" in html and "script" in html
    assert "<b>bold" not in html
    from circuitbook.book.render import view

    assert "<script>" not in view(book, "neuron", 0, 0).html
