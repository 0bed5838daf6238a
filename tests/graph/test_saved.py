"""Saved graphs in a book: round trip, recompute, supernodes stored, hypotheses tested and recorded."""

from __future__ import annotations

import math

import pytest

from circuitbook.book import Book
from circuitbook.book.graphs import GraphNameError, experiments
from circuitbook.graph import ablate, attribute, to_json
from circuitbook.graph.experiment import run_test
from circuitbook.graph.saved import (ModelChanged, add_hypothesis, auto_group, load, recompute, run_hypothesis, save,
                                     set_groups)
from circuitbook.graph.supernodes import Supernode
from circuitbook.graph.types import GraphError

PROMPT = [0, 5, 17, 3, 44, 9, 21]


@pytest.fixture()
def book(tmp_path):
    return Book.open(tmp_path / "b.db")


@pytest.fixture(scope="module")
def g(neo):
    return attribute(neo, PROMPT, max_nodes=30, max_edges=200)


def test_save_load_recompute(book, neo, g, tmp_path):
    save(book, "one", g, PROMPT, neo.fingerprint())
    s = load(Book.open(tmp_path / "b.db", readonly=True), "one")  # a fresh handle: no model, no cache
    assert to_json(s.graph) == to_json(g)
    with pytest.raises(GraphNameError, match="already saved"):
        save(book, "one", g, PROMPT, neo.fingerprint())
    g2, changed = recompute(book, "one", neo)
    assert not changed and to_json(g2)["nodes"] == to_json(g)["nodes"]
    save(book, "one", g, PROMPT, "someone-else", overwrite=True)
    assert recompute(book, "one", neo)[1] is True
    with pytest.raises(GraphNameError, match="no saved graph named 'two'"):
        load(book, "two")


def test_groups_hypothesis_experiment(book, neo, g):
    save(book, "g", g, PROMPT, neo.fingerprint())
    neurons = [n.id for n in g.nodes if n.kind == "neuron"][:3]
    set_groups(book, "g", [Supernode("top neurons", neurons)])
    with pytest.raises(GraphError, match="not in the graph"):
        set_groups(book, "g", [Supernode("bad", ["neuron/1/47/99"])])
    assert [s.name for s in load(book, "g").supernodes] == ["top neurons"]
    hid = add_hypothesis(book, "g", "the top neurons drive the target", {"supernode": "top neurons", "how": "zero"},
                         threshold=1e-6)
    out = run_hypothesis(book, "g", hid, neo)
    want = ablate(neo, PROMPT, neurons, g.target)  # independent path: the graph stage's ablation
    r = out["result"]
    assert r["delta"] == pytest.approx(want.delta, abs=1e-6)
    assert r["prob_after"] == pytest.approx(math.exp(want.logprob_after), rel=1e-5)
    assert out["verdict"] == ("supported" if want.delta <= -1e-6 else "refuted")
    rows = experiments(book, hid)
    assert len(rows) == 1 and rows[0]["verdict"] == out["verdict"]
    save(book, "g", g, PROMPT, "changed", overwrite=True)
    set_groups(book, "g", [Supernode("top neurons", neurons)])
    hid = add_hypothesis(book, "g", "x", {"supernode": "top neurons"}, threshold=0.1)
    with pytest.raises(ModelChanged, match="recompute it"):
        run_hypothesis(book, "g", hid, neo)
    with pytest.raises(GraphError, match="no supernode 'nope'"):
        add_hypothesis(book, "g", "x", {"supernode": "nope"}, threshold=0.1)


def test_auto_group_stored(book, neo, g):
    save(book, "a", g, PROMPT, neo.fingerprint())
    groups = auto_group(book, "a")
    assert [(s.name, s.members) for s in load(book, "a").supernodes] == sorted(
        [(s.name, s.members) for s in groups])


def test_patch_steer_resample(neo, g):
    neurons = [n.id for n in g.nodes if n.kind == "neuron"][:3]
    assert run_test(neo, PROMPT, neurons, g.target, how="patch", other=PROMPT).delta == 0.0  # self-patch
    assert run_test(neo, PROMPT, neurons, g.target, how="steer", scale=1.0).delta == 0.0
    zero = ablate(neo, PROMPT, neurons, g.target).delta
    assert run_test(neo, PROMPT, neurons, g.target, how="steer", scale=0.0).delta == pytest.approx(zero, abs=1e-6)
    other = [0, 7, 7, 7, 7, 7, 7]
    assert run_test(neo, PROMPT, neurons, g.target, how="patch", other=other).delta != 0.0
    r = run_test(neo, PROMPT, neurons, g.target, how="resample", seed=3)
    # independent: take the whole hook_post, move the members' values by the seeded permutation, feed it back
    import torch
    from circuitbook.model import run

    w, toks = neo.weights, torch.tensor(PROMPT)[None]
    perm = torch.randperm(len(PROMPT), generator=torch.Generator().manual_seed(3))
    taps = {f"blocks.{l}.mlp.hook_post": run(w, toks, (f"blocks.{l}.mlp.hook_post",))[f"blocks.{l}.mlp.hook_post"]
            for l in range(w.cfg.n_layers)}
    new = {k: v.clone() for k, v in taps.items()}
    for nid in neurons:
        _, l, i, q = nid.split("/")
        new[f"blocks.{l}.mlp.hook_post"][0, int(q), int(i)] = taps[f"blocks.{l}.mlp.hook_post"][0, int(perm[int(q)]), int(i)]
    touched = {f"blocks.{nid.split('/')[1]}.mlp.hook_post" for nid in neurons}
    lg = run(w, toks, ("logits",), {k: (lambda x, k=k: new[k]) for k in touched})["logits"][0, -1]
    base = run(w, toks, ("logits",))["logits"][0, -1]
    assert r.delta == pytest.approx(float(lg[g.target] - base[g.target]), abs=1e-5)
    with pytest.raises(GraphError, match="unit nodes"):
        run_test(neo, PROMPT, ["input/2"], g.target, how="steer", scale=2.0)
