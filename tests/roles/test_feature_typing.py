"""Typing dictionary features with the neurons' statistics: on the superposition demo (8 rules spread over 16
neurons) an exact transcoder's features are typed with their planted rules, the neurons are not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from circuitbook.demo.superposition import build_superposition
from circuitbook.dictionary.typing import type_features
from circuitbook.roles.run import type_model

_spec = importlib.util.spec_from_file_location("dict_conftest", Path(__file__).parents[1] / "dictionary" / "conftest.py")
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)

DEMO_TO_TYPING = {"NAME": "PROPN", "SEARCH": "VERB", "CCONJ": "CONJ"}


def _planted_rule(name: str) -> str:
    a, b = name.split("->")
    return f"{DEMO_TO_TYPING.get(a, a)} -> {DEMO_TO_TYPING.get(b, b)}"


@pytest.fixture(scope="module")
def typed():
    demo = build_superposition(0, n_stories=120)
    feats = type_features(demo.model, _conf.exact_transcoder(demo), demo.stories, progress=False)
    neurons = type_model(demo.model, demo.stories, progress=False, classes=feats.token_classes)
    return demo, feats, neurons


def test_features_typed_with_their_planted_rules(typed):
    demo, feats, neurons = typed
    planted = [_planted_rule(n) for n in demo.truth["rules"]]
    got = [(t.type, t.rule) for t in feats.types]
    right = sum(typ == "syntax" and rule == want for (typ, rule), want in zip(got, planted))
    wrong = sum(typ in ("syntax", "mixed") and rule != want for (typ, rule), want in zip(got, planted))
    assert right >= 5 and wrong == 0, list(zip(planted, got))
    # no neuron is one of the rules: at most one neuron's rule is a planted rule
    assert sum(t.rule in planted for t in neurons.types) <= 1, [t.rule for t in neurons.types]


def test_sae_features_are_refused():
    import torch

    from circuitbook.dictionary import Dictionary, DictionaryConfig
    from circuitbook.dictionary.config import DictionaryError

    demo = build_superposition(0, n_stories=20)
    d_model = demo.model.cfg.d_model
    cfg = DictionaryConfig("sae", 0, d_model, 4, "topk", k=1)
    sae = Dictionary.from_tensors(cfg, {"W_enc": torch.zeros(d_model, 4), "b_enc": torch.zeros(4),
                                        "W_dec": torch.zeros(4, d_model), "b_dec": torch.zeros(d_model)})
    with pytest.raises(DictionaryError, match="SAE"):
        type_features(demo.model, sae, demo.stories, progress=False)


def test_feature_types_are_stored_read_and_rendered(typed, tmp_path):
    """``store_feature_types`` keeps every feature's verdict in the book: read back equal, counted, shown on the
    feature's page (a dead feature says so); a dictionary replaced under the same name hides the old types."""
    import dataclasses

    from circuitbook.book import Book
    from circuitbook.book import roles as stored
    from circuitbook.book.render import unit_html
    from circuitbook.dictionary.store import save_to_book

    demo, feats, _ = typed
    d = _conf.exact_transcoder(demo)
    book = Book.open(tmp_path / "b.db")
    n = save_to_book(book, "exact", d)
    types = list(feats.types)
    types[-1] = dataclasses.replace(types[-1], type="unclear", rule="", evidence={"dead": True})
    stored.store_feature_types(book, n, types, {"alpha": 0.05})
    back = stored.feature_types(book, n, evidence=True)
    assert len(back) == len(types)
    for t in types:
        got = stored.feature_type(book, n, t.idx)
        assert (got["type"], got["rule"], got["evidence"]) == (t.type, t.rule, t.evidence)
    counts = stored.feature_type_counts(book, n)
    assert sum(counts.values()) == len(types) and counts["syntax"] == sum(t.type == "syntax" for t in types)
    assert [x["idx"] for x in stored.feature_types(book, n, type="syntax")] == sorted(
        (t.idx for t in types if t.type == "syntax"), key=lambda i: (-types[i].score, i))
    first = next(t for t in types if t.type == "syntax")
    page = unit_html(book.unit("feature", n, first.idx))
    assert first.rule.replace(">", "&gt;") in page
    assert "dead feature" in unit_html(book.unit("feature", n, types[-1].idx))
    save_to_book(book, "exact", d, replace=True)  # same number, a new dictionary: its old types are not its own
    assert stored.feature_type(book, n, first.idx) is None and stored.feature_types(book, n) == []
    assert "typing" not in book.unit("feature", n, first.idx).sections
