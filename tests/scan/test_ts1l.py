"""A real trained model: scan ts-1l-dev over the start of the shared stories and ask the book about it."""

import math

import pytest

from circuitbook.book import Book
from circuitbook.book import scan as q
from circuitbook.scan import scan_corpus

PRONOUNS = {" he", " she", " they", " it", " He", " She", " They", " It", " I", " we", " We", " you", " You"}


@pytest.fixture(scope="module")
def book(ts1l, stories_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("ts1l") / "book.db"
    summary = scan_corpus(ts1l, stories_path, path, max_tokens=6000, batch_size=8, k=16, progress=False)
    assert summary.complete and summary.tokens >= 6000 and summary.n_neurons == 2048 and summary.n_heads == 16
    return Book.open(path)


def test_book_answers_neuron_queries(book):
    st = q.neuron_stats(book, 0, 896)
    assert st.count >= 6000 and st.min <= st.mean <= st.max and sum(st.hist_counts) == st.count
    assert 0 < st.fire_rate < 1
    top = q.top_examples(book, "neuron", 0, 896)
    assert len(top) == 16 and top[0].value == pytest.approx(st.max)
    assert [e.value for e in top] == sorted((e.value for e in top), reverse=True)
    for e in top:
        assert e.values[e.focus] == pytest.approx(e.value) and e.tokens[e.focus] >= 0
    # PROVENANCE: neuron 896 fires on pronouns (and, the scan shows, on other subject words: girl, Tim...)
    means = q.token_means(book, 0, 896, 20)
    assert len({m.token for m in means} & PRONOUNS) >= 3, [m.token for m in means]
    people = PRONOUNS | {" girl", " boy", " Tim", " mom", " dad", " Lily", " Ben", " Billy", " Sue", " Max"}
    assert sum(book.token_strs()[e.tokens[e.focus]] in people for e in top) >= 12
    bands = q.quantile_examples(book, 0, 896)
    assert len(bands) >= 5
    for band, exs in bands.items():
        lo, hi = q.band_range(band, st.hist_exp)
        assert all(lo < e.value <= hi for e in exs)
    rows = q.unit_table(book, "neuron", order_by="fire_rate", limit=5, where="max > 0")
    assert len(rows) == 5 and rows[0]["fire_rate"] >= rows[-1]["fire_rate"]


def test_book_answers_head_queries(book):
    for h in range(16):
        st = q.head_stats(book, 0, h)
        assert 0 <= st.bos <= 1 and 0 <= st.self <= 1 and st.dist >= 0 and 0 <= st.entropy <= math.log(512)
    ex = q.top_examples(book, "head", 0, 3, 4)
    assert len(ex) == 4 and all(0 < e.value <= 1 and e.key_distance >= 0 for e in ex)
    pairs = q.head_pairs(book, 0, 3, 5)
    assert pairs and pairs[0].mass >= pairs[-1].mass
    html = book.head(0, 3)._repr_html_()
    assert "Strongest attention" in html
