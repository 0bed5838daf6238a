"""Token classes: BPE alignment on tricky cases and aggregation, against spaCy's own tags."""

from __future__ import annotations

import numpy as np
import pytest

from circuitbook.model.tokenizer import Tokenizer
from circuitbook.roles.pos import CLASSES, align, load_tagger, tagged, token_classes, token_spans


@pytest.fixture(scope="module")
def nlp():
    return load_tagger()


@pytest.fixture(scope="module")
def gpt2(gpt2_tokenizer_dir):
    return Tokenizer.from_dir(gpt2_tokenizer_dir)


def classes_of(tok, nlp, text):
    ids = tok.encode(text)
    cls, tags = align(text, tagged(nlp(text)), token_spans(tok, text, ids))
    return [(tok.token_str(i), CLASSES[c], t) for i, c, t in zip(ids, cls, tags)]


def test_spans_cover_visible_characters(gpt2):
    text = 'Lily didn\'t want to go. "Wow!" said Tom\'s mom.\n\nThe café 😀 end'
    ids = gpt2.encode(text)
    spans = token_spans(gpt2, text, ids)
    assert all(s is not None for s in spans)
    for i, (s, e) in zip(ids, spans):
        piece = gpt2.token_str(i)
        if "\ufffd" not in piece:
            assert text[s:e] == piece.strip() or (not piece.strip() and text[s:e] == piece[: e - s])
    # the emoji is two byte tokens sharing one character's span
    emoji = [sp for i, sp in zip(ids, spans) if "\ufffd" in gpt2.token_str(i)]
    assert len(emoji) >= 2 and len(set(emoji)) == 1 and text[emoji[0][0]:emoji[0][1]].strip() == "😀"


def test_alignment_tricky_bpe_cases(gpt2, nlp):
    got = classes_of(gpt2, nlp, 'Lily didn\'t want to go. "Wow!" said Tom\'s mom.\n\nThe end')
    d = {}
    for s, c, t in got:
        d.setdefault(s, (c, t))
    # a word split into pieces: every piece gets the word's class
    assert gpt2.token_str(gpt2.encode("Lily")[0]) == "L" and d["L"][0] == d["ily"][0] == "PROPN"
    # leading spaces are ignored when matching
    assert d[" said"][0] == "VERB" and d[" mom"][0] == "NOUN"
    # contraction split differently by BPE (" didn" "'t") and spaCy ("did" "n't"): largest overlap wins
    assert d[" didn"][0] == "AUX" and d["'t"][0] == "OTHER"
    # punctuation, including a token that glues two punctuation marks ('!"')
    assert d["."][0] == "PUNCT" and d['!"'][0] == "PUNCT" and d[' "'][0] == "PUNCT"
    # possessive and whitespace-only tokens
    assert d["'s"][0] == "OTHER" and d["\n"] == ("OTHER", "_SP")
    assert d["The"][0] == "DET"


def test_alignment_matches_tagger_on_whole_words(gpt2, nlp, stories_path):
    """Where a BPE token is exactly one spaCy word, its class is that word's class (brute force check)."""
    from circuitbook.corpus import read_stories
    from circuitbook.roles.pos import word_class

    text = next(iter(read_stories(stories_path)))
    doc = nlp(text)
    words = {(t.idx, t.idx + len(t.text)): word_class(t.pos_, t.tag_) for t in doc}
    ids = gpt2.encode(text)
    spans = token_spans(gpt2, text, ids)
    cls, _ = align(text, tagged(doc), spans)
    exact = [(c, words[sp]) for c, sp in zip(cls, spans) if sp in words]
    assert len(exact) > 0.8 * len(ids)
    assert all(a == b for a, b in exact)


def test_word_level_tokenizer_and_unknown_tokens(nlp):
    from circuitbook.demo import demo_tokenizer

    tok = demo_tokenizer()
    text = "Once upon a time, there was a zebra named Lily. She looked for the ball."
    got = classes_of(tok, nlp, text)
    assert ("<unk>", "OTHER", "_UNK") in got  # "zebra" is not in the demo vocabulary
    d = dict((s, c) for s, c, _ in got)
    assert d[" Lily"] == "PROPN" and d[" She"] == "PRON" and d[" looked"] == "VERB" and d[" the"] == "DET"


def test_token_classes_counts(gpt2, nlp):
    stories = ["The dog ran. The dog sat.", "A big cat ran home."]
    tc = token_classes(stories, gpt2, nlp, progress=False)
    the, the_ = gpt2.encode("The")[0], gpt2.encode(" The")[0]  # story-initial vs after a space
    dog = gpt2.encode(" dog")[0]
    assert tc.counts[the, CLASSES.index("DET")] == 1 and tc.n[the] == 1 and tc.profile(the_) == {"DET": 1.0}
    assert tc.n[dog] == 2
    assert tc.profile(dog) == {"NOUN": 1.0} and tc.dominant_tag(dog) == "NN"
    assert tc.n.sum() == sum(len(gpt2.encode(s)) for s in stories) == tc.source["n_tokens"]
    assert np.isclose(tc.base_rates().sum(), 1.0)
