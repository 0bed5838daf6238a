"""Feature coverage (handcraft/coverage.py ``feature_coverage``): equal to a forward computed by hand from the
dictionary's tensors, and on planted truth (the superposition demo and its exact transcoder, several seeds)
keeping the planted rule features recovers the loss they carry, keeping none recovers nothing."""

from __future__ import annotations

import pytest
import torch

from circuitbook.book import Book
from circuitbook.corpus import batches
from circuitbook.demo.superposition import build_superposition
from circuitbook.dictionary.handcraft import feature_dictionary
from circuitbook.dictionary.store import save_to_book
from circuitbook.handcraft import feature_coverage, feature_coverage_from_book, mean_loss
from circuitbook.handcraft.splice import SpliceError

from ..dictionary.conftest import exact_transcoder
from .conftest import hand_feature_means, hand_loss, keep_only, random_dictionary


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("mode", ["mean", "zero"])
@pytest.mark.parametrize("error", ["keep", "drop"])
def test_feature_coverage_is_the_hand_forward(demo, demo_fit, mode, error):
    m = demo.model
    d = random_dictionary("transcoder", m.cfg.d_model, activation="topk", k=4, seed=5)
    fd = feature_dictionary(d, 0, "r", m.cfg)
    keep = [(2, "a"), (3, "a"), (11, "b")]
    cov = feature_coverage(m, fd, keep, demo_fit, mode, error)
    fill = hand_feature_means(m.weights, demo_fit(), d) if mode == "mean" else torch.zeros(fd.n_features)
    kept = hand_loss(m.weights, demo_fit(), d, keep_only({2, 3, 11}, fill), error)
    none = hand_loss(m.weights, demo_fit(), d, keep_only(set(), fill), error)
    every = hand_loss(m.weights, demo_fit(), d, lambda f: f, error)
    orig = mean_loss(m.weights, demo_fit())[0]
    assert cov.ce_kept == pytest.approx(kept, abs=2e-5) and cov.ce_ablated == pytest.approx(none, abs=2e-5)
    assert cov.ce_dictionary == pytest.approx(every, abs=2e-5) and cov.ce_original == pytest.approx(orig, abs=1e-9)
    assert cov.recovered == pytest.approx((none - kept) / (none - orig), abs=1e-3)
    assert abs(none - orig) > 1e-3  # ablating the features matters, so the ratio is no noise
    groups = {g.group: g for g in cov.groups}
    assert groups["all labelled"].n_units == 3 and groups["a"].n_units == 2 and groups["b"].n_units == 1
    b_only = hand_loss(m.weights, demo_fit(), d, keep_only({11}, fill), error)
    assert groups["b"].ce_kept == pytest.approx(b_only, abs=2e-5)
    assert cov.units == [("feature", 0, 2, "a"), ("feature", 0, 3, "a"), ("feature", 0, 11, "b")]
    assert f"error term {'kept' if error == 'keep' else 'dropped'}" in cov.summary()


def test_bad_feature_coverage_input(demo, demo_fit):
    m = demo.model
    fd = feature_dictionary(random_dictionary("transcoder", m.cfg.d_model), 0, "r", m.cfg)
    with pytest.raises(SpliceError, match="feature 99 does not exist"):
        feature_coverage(m, fd, [(99, "x")], demo_fit)
    with pytest.raises(SpliceError, match="keep | drop"):
        feature_coverage(m, fd, [(1, "x")], demo_fit, error="sometimes")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_rule_features_carry_the_loss(seed, tmp_path):
    demo = build_superposition(seed, n_stories=80)
    m, names = demo.model, list(demo.truth["rules"])
    corpus = lambda: batches(demo.stories, m.tokenizer, 256, 16)  # noqa: E731
    book = Book.open(tmp_path / "b.db")
    book.bind_model(m)
    number = save_to_book(book, "exact", exact_transcoder(demo), model=m)
    fd = feature_dictionary(exact_transcoder(demo), number, "exact", m.cfg)
    for i, name in enumerate(names):
        book.set_label("feature", number, i, label=name)
    every = feature_coverage_from_book(book, m, fd, corpus, "mean", "keep")
    dropped = feature_coverage_from_book(book, m, fd, corpus, "mean", "drop", per_label=False)
    half = feature_coverage(m, fd, [(i, names[i]) for i in range(4)], corpus, "mean", "keep", per_label=False)
    none = feature_coverage(m, fd, [], corpus, "mean", "keep", per_label=False)
    singles = {g.group: g.recovered for g in every.groups if g.kind == "label"}
    print(f"\nseed {seed}: all 8 planted features {every.recovered:.4f} (error dropped {dropped.recovered:.4f}, "
          f"dictionary alone {dropped.recovered_dictionary:.4f}), the first 4 {half.recovered:.4f}, none "
          f"{none.recovered:.4f}; each alone " + ", ".join(f"{k} {v:.3f}" for k, v in singles.items()))
    assert every.ce_ablated > every.ce_original + 0.03  # the MLP carries loss in this model
    assert every.recovered == pytest.approx(1.0, abs=1e-3) and dropped.recovered > 0.99  # the exact transcoder
    assert 0.15 < half.recovered < 0.85
    assert none.recovered == pytest.approx(0.0, abs=1e-9) and none.ce_kept == pytest.approx(every.ce_ablated, abs=1e-9)
    # a rule alone can lose to its mean (its targets may rarely follow its sources in this corpus), but most carry loss
    assert len(singles) == 8 and sum(v > 0.02 for v in singles.values()) >= 5
    assert sum(singles.values()) == pytest.approx(every.recovered, abs=0.15)  # rules on disjoint tokens: ~additive
    assert every.units[0] == ("feature", number, 0, names[0])
