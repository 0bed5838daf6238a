"""Fixtures: the superposition demo model, an exact hand-built transcoder of its MLP, and a written copy."""

from __future__ import annotations

import pytest
import torch

from circuitbook.demo.superposition import GAIN, build_superposition
from circuitbook.dictionary import Dictionary, DictionaryConfig


@pytest.fixture(scope="session")
def sp_demo():
    return build_superposition(0, n_stories=120)


def exact_transcoder(demo) -> Dictionary:
    """8 features, k=1: feature r reads rule r's input class (pre = +0.5 on its tokens, -0.5 on every other
    token: W_enc solved by least squares on the token embeddings, which are what ln2 outputs in this model)
    and writes GAIN * w_r / 0.5: the MLP's function exactly, by construction of the superposition model."""
    m, truth = demo.model, demo.truth
    W_E = m.weights.W_E.double()
    rules = list(truth["rules"].values())
    ind = torch.zeros(W_E.shape[0], len(rules), dtype=torch.float64)
    for r, rule in enumerate(rules):
        ind[rule["reads"], r] = 1.0
    W_enc = (torch.linalg.pinv(W_E) @ ind).float()
    W_dec = torch.stack([torch.tensor(r["w"]) for r in rules]) * (GAIN / 0.5)
    cfg = DictionaryConfig("transcoder", 0, m.cfg.d_model, len(rules), "topk", k=1)
    return Dictionary.from_tensors(cfg, {"W_enc": W_enc, "b_enc": torch.full((len(rules),), -0.5), "W_dec": W_dec,
                                         "b_dec": torch.zeros(m.cfg.d_model)})


@pytest.fixture(scope="session")
def sp_dir(sp_demo, tmp_path_factory):
    return sp_demo.write(tmp_path_factory.mktemp("superposition"))
