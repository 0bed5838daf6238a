"""handcraft/features.py against a forward written by hand from the dictionary's tensors (encode, edit,
decode, + the error term): transcoders, skip-transcoders and SAEs, ReLU and TopK, the error kept or dropped."""

from __future__ import annotations

import pytest
import torch

from circuitbook.dictionary.handcraft import feature_dictionary
from circuitbook.handcraft import mean_loss
from circuitbook.handcraft.features import ablate_features, feature_means, splice_interventions, units_writer
from circuitbook.handcraft.splice import SpliceError
from circuitbook.model import run

from .conftest import hand_feature_means, hand_loss, keep_only, random_dictionary

CASES = [("transcoder", "relu"), ("transcoder", "topk"), ("skip-transcoder", "relu"), ("sae", "topk")]


@pytest.mark.parametrize("kind, act", CASES)
@pytest.mark.parametrize("error", ["keep", "drop"])
def test_splice_with_mean_ablated_features_is_the_hand_forward(demo, demo_fit, kind, act, error):
    m = demo.model
    d = random_dictionary(kind, m.cfg.d_model, activation=act, seed=3)
    fd = feature_dictionary(d, 0, "r", m.cfg)
    means = feature_means(m.weights, fd, demo_fit())
    hand_means = hand_feature_means(m.weights, demo_fit(), d)
    assert torch.allclose(means.double(), hand_means, atol=1e-5) and float(hand_means.max()) > 0.01
    keep = {1, 5, 7, 20}
    iv = splice_interventions(m.weights, fd, ablate_features(keep, [], fd.n_features, "mean", means), None, error)
    got = mean_loss(m.weights, demo_fit(), iv)[0]
    want = hand_loss(m.weights, demo_fit(), d, keep_only(keep, hand_means), error)
    assert got == pytest.approx(want, abs=2e-5)
    assert abs(got - mean_loss(m.weights, demo_fit())[0]) > 1e-3  # the edit matters: the comparison can fail


def test_no_edit_with_the_error_kept_is_the_model_and_dropped_is_the_reconstruction(demo, demo_fit):
    m = demo.model
    d = random_dictionary("transcoder", m.cfg.d_model, seed=1)
    fd = feature_dictionary(d, 0, "r", m.cfg)
    toks = next(iter(demo_fit())).tokens
    base = run(m.weights, toks)["logits"]
    kept = run(m.weights, toks, ("logits",), splice_interventions(m.weights, fd, error="keep"))["logits"]
    assert torch.allclose(kept, base, atol=1e-4)
    dropped = mean_loss(m.weights, demo_fit(), splice_interventions(m.weights, fd, error="drop"))[0]
    assert dropped == pytest.approx(hand_loss(m.weights, demo_fit(), d, lambda f: f, "drop"), abs=2e-5)


def test_handcrafted_units_write_in_place_of_replaced_features(demo, demo_fit):
    """Feature 4 set to 0 and a unit gelu(x @ w + b) * v added: the hand forward does the same sum."""
    m = demo.model
    d = random_dictionary("transcoder", m.cfg.d_model, seed=2)
    fd = feature_dictionary(d, 0, "r", m.cfg)
    g = torch.Generator().manual_seed(0)
    W_in, b_in = torch.randn(m.cfg.d_model, 1, generator=g) * 0.2, torch.tensor([0.3])
    W_out = torch.randn(1, m.cfg.d_model, generator=g)
    iv = splice_interventions(m.weights, fd, ablate_features(None, [4], fd.n_features, "zero", None),
                              units_writer(m.weights, W_in, b_in, W_out), "keep")

    def zero4(f):
        f = f.clone()
        f[..., 4] = 0
        return f

    def unit(x):  # gelu_new, written out
        pre = x @ W_in.double() + b_in.double()
        return 0.5 * pre * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (pre + 0.044715 * pre ** 3))) @ W_out.double()

    assert m.cfg.act_fn == "gelu_new"
    got = mean_loss(m.weights, demo_fit(), iv)[0]
    assert got == pytest.approx(hand_loss(m.weights, demo_fit(), d, zero4, "keep", unit), abs=2e-5)


def test_a_dictionary_that_does_not_fit_is_refused(demo):
    m = demo.model
    wide = feature_dictionary(random_dictionary("transcoder", 2 * m.cfg.d_model), 0, "wide")
    with pytest.raises(SpliceError, match="d_model is 256"):
        splice_interventions(m.weights, wide)
    d = random_dictionary("transcoder", m.cfg.d_model)
    d.cfg.layer = 2
    with pytest.raises(SpliceError, match="layer 2, but the model has 1 layer"):
        splice_interventions(m.weights, feature_dictionary(d, 0, "deep"))
    fd = feature_dictionary(random_dictionary("transcoder", m.cfg.d_model), 0, "r")
    with pytest.raises(SpliceError, match="feature 24 does not exist"):
        fd.check_index(24)
    with pytest.raises(SpliceError, match="keep | drop"):
        splice_interventions(m.weights, fd, error="maybe")
