"""Attribution graphs: exact sums against forward passes, node values and edges against an independent
autograd twin, conservation of value along edges, pruning, and bad input."""

from __future__ import annotations

import pytest
import torch

from circuitbook.errors import CircuitbookError
from circuitbook.graph import attribute, direct_logit
from circuitbook.graph.attribution import _backward, _setup
from circuitbook.web.links import node_url
from circuitbook.model import run

TOKS = [5, 17, 3, 44, 9, 17, 28, 3]


def _hf_logits(hf, toks):
    with torch.no_grad():
        return hf(torch.tensor([toks])).logits[0].float()


@pytest.mark.parametrize("name", ["neo", "gpt2"])
@pytest.mark.parametrize("pos", [-1, 4])
def test_direct_contributions_sum_to_hf_logit(request, name, pos):
    model, hf = request.getfixturevalue(name), request.getfixturevalue(name + "_hf")
    logits = _hf_logits(hf, TOKS)
    p = pos % len(TOKS)
    for target, contrast in [(7, None), (11, 2)]:
        dl = direct_logit(model, TOKS, target, pos=pos, contrast=contrast)
        want = logits[p, target] - (logits[p, contrast] if contrast is not None else 0.0)
        assert dl.logit == pytest.approx(float(want), abs=1e-4)
        assert dl.total() == pytest.approx(float(want), abs=1e-4)
        assert dl.heads.shape == (2, model.cfg.n_heads, len(TOKS))
        assert not dl.heads[:, :, p + 1:].any()  # causal: no source after the query
        # each head's per-source terms add up to the head's output (hook_result) read through the frozen norm
        c = run(model.weights, torch.tensor([TOKS]), ["blocks.1.attn.hook_result", "ln_final.hook_scale"])
        u = model.weights.W_U[:, target] - (model.weights.W_U[:, contrast] if contrast is not None else 0)
        dvec = model.weights.lnf_w * u
        dvec = (dvec - dvec.mean()) / c["ln_final.hook_scale"][0, p]
        assert torch.allclose(dl.heads[1].sum(-1), c["blocks.1.attn.hook_result"][0, p] @ dvec, atol=1e-5)


@pytest.mark.parametrize("name", ["neo", "gpt2"])
def test_values_and_edges_match_autograd_twin(request, name, linear_twin):
    model = request.getfixturevalue(name)
    pos, target = 6, 13
    g = attribute(model, TOKS, target, pos=pos, max_nodes=None, max_edges=None)
    twin = linear_twin(model, TOKS, pos, target)
    logit, outs, grads = twin.run()
    assert float(logit) == pytest.approx(g.logit, abs=1e-4)  # the frozen model reproduces the forward
    nodes = {n.id: n for n in g.nodes}
    for n in g.nodes[:-1]:
        out, grad = twin.node_out_and_grad(n.id, outs, grads)
        assert n.value == pytest.approx(float(out @ grad), abs=1e-4), n.id
    # nodes left out have no effect at all (last layer away from pos, heads reading the future)
    assert g.n_candidates == len(g.nodes) - 1
    checked = 0
    for e in g.edges[:: max(1, len(g.edges) // 300)]:
        if e.target == "logit":
            continue
        out, _ = twin.node_out_and_grad(e.source, outs, grads)
        assert e.weight == pytest.approx(twin.edge(out, e.target, grads), abs=1e-4), (e.source, e.target)
        checked += 1
    assert checked > 50
    # direct edges into the logit are the direct contributions
    dl = direct_logit(model, TOKS, target, pos=pos)
    for e in g.edges:
        if e.target == "logit" and e.source.startswith("head/"):
            l, h, q, k = map(int, e.source.split("/")[1:])
            assert e.weight == pytest.approx(float(dl.heads[l, h, k]), abs=1e-5)
            assert nodes[e.source].direct == pytest.approx(e.weight, abs=1e-6)


@pytest.mark.parametrize("name", ["neo", "gpt2"])
def test_value_is_conserved_along_edges(request, name, linear_twin):
    """Unpruned: a node's outgoing edges add up to its value; incoming edges plus biases too."""
    model = request.getfixturevalue(name)
    g = attribute(model, TOKS, 21, pos=-1, contrast=4, max_nodes=None, max_edges=None)
    out_sum, in_sum = {}, {}
    for e in g.edges:
        out_sum[e.source] = out_sum.get(e.source, 0.0) + e.weight
        in_sum[e.target] = in_sum.get(e.target, 0.0) + e.weight
    for n in g.nodes[:-1]:
        assert out_sum.get(n.id, 0.0) == pytest.approx(n.value, abs=1e-4), n.id
    # the logit's in-edges are all direct contributions: plus the direct constants they give the logit
    assert in_sum["logit"] + sum(g.constants.values()) == pytest.approx(g.logit, abs=1e-4)
    # inputs carry everything that is not a constant
    inputs = sum(n.value for n in g.nodes if n.kind == "input")
    assert inputs + sum(g.bias_flow.values()) == pytest.approx(g.logit, abs=1e-4)
    # incoming edges plus the biases written where the target reads (checked with the twin) == value
    twin = linear_twin(model, TOKS, len(TOKS) - 1, 21, contrast=4)
    _, _, grads = twin.run()
    for n in g.nodes:
        if n.kind in ("head", "neuron"):
            assert in_sum.get(n.id, 0.0) + twin.bias_in(n.id, grads) == pytest.approx(n.value, abs=1e-4), n.id


@pytest.mark.parametrize("fixture", ["ts1l", "ts656k"])
def test_real_models_sum_exactly(request, fixture):
    model = request.getfixturevalue(fixture)
    prompt = "Once upon a time, there was a little girl named Lily. She"
    toks = model.to_tokens(prompt)
    logits = run(model.weights, toks)["logits"][0, -1]
    g = attribute(model, prompt, max_nodes=30, max_edges=80)
    assert g.target == int(logits.argmax())  # default target: the model's top prediction
    assert g.logit == pytest.approx(float(logits[g.target]), abs=1e-3)
    dl = direct_logit(model, prompt, g.target)
    assert dl.total() == pytest.approx(float(logits[g.target]), abs=2e-3)
    s = _setup(model, prompt, g.target, -1, None)
    bw = _backward(model.weights, s)
    assert float(bw.v_inputs.sum()) + sum(bw.bias_flow.values()) == pytest.approx(float(logits[g.target]), abs=2e-3)
    # pruned graph: budget respected, edges only among kept nodes, strongest first
    assert len(g.nodes) <= 31 and len(g.edges) <= 80
    ids = {n.id for n in g.nodes}
    assert all(e.source in ids and e.target in ids for e in g.edges)
    ws = [abs(e.weight) for e in g.edges]
    assert ws == sorted(ws, reverse=True)
    # kept nodes are the largest by |value| among all candidates
    full = attribute(model, prompt, g.target, max_nodes=None, max_edges=0)
    top = sorted((abs(n.value) for n in full.nodes if n.kind != "logit"), reverse=True)[:30]
    assert sorted((abs(n.value) for n in g.nodes if n.kind != "logit"), reverse=True) == pytest.approx(top)
    if model.cfg.n_layers > 1:  # 2-layer: layer-0 nodes away from the target position matter too
        assert any(n.layer == 0 and n.pos != g.pos for n in full.nodes if n.kind in ("head", "neuron"))


def test_ts1l_contrast_and_labels(ts1l):
    prompt = "The cat sat on the"
    lab = {("neuron", 0, 896): "pronoun -> verb", ("head", 0, 3): "prev token"}
    g = attribute(ts1l, prompt, " mat", contrast=" dog", max_nodes=None, max_edges=10, labels=lab)
    logits = run(ts1l.weights, ts1l.to_tokens(prompt))["logits"][0, -1]
    t, c = ts1l.tokenizer.encode(" mat")[0], ts1l.tokenizer.encode(" dog")[0]
    assert g.logit == pytest.approx(float(logits[t] - logits[c]), abs=1e-3)
    assert g.target_str == " mat" and g.contrast_str == " dog"
    n = g.node(f"neuron/0/896/{g.pos}")
    assert n.label == "pronoun -> verb" and node_url(n) == "/neuron/0/896"
    assert all(x.label == "prev token" for x in g.nodes if x.kind == "head" and x.index == 3)
    assert node_url(next(x for x in g.nodes if x.kind == "head" and x.index == 3)) == "/head/0/3"
    # 1-layer: every node sits at the target position and its value is its direct contribution
    # plus what flows through the MLP; the input at pos is the direct path
    assert {x.pos for x in g.nodes} == {g.pos} | {x.pos for x in g.nodes if x.kind == "input"}
    thr = attribute(ts1l, prompt, " mat", node_threshold=0.5, edge_threshold=0.2, max_nodes=None, max_edges=None)
    assert all(abs(x.value) >= 0.5 for x in thr.nodes if x.kind != "logit")
    assert all(abs(e.weight) >= 0.2 for e in thr.edges)


def test_bad_input(ts1l, neo):
    with pytest.raises(CircuitbookError, match="not one"):
        attribute(ts1l, "The cat", " elephantine")
    with pytest.raises(CircuitbookError, match="position"):
        attribute(ts1l, "The cat", pos=7)
    with pytest.raises(CircuitbookError, match="contrast"):
        attribute(ts1l, "The cat", " sat", contrast=" sat")
    with pytest.raises(CircuitbookError, match="empty"):
        attribute(ts1l, "")
    with pytest.raises(CircuitbookError, match="vocabulary"):
        attribute(neo, TOKS, 10_000)
    with pytest.raises(CircuitbookError, match="at most"):
        attribute(neo, list(range(40)))
    with pytest.raises(CircuitbookError, match="tokenizer"):
        attribute(neo, "text needs a tokenizer")


def test_labels_from_a_book(ts1l, tmp_path):
    from circuitbook.book import Book

    book = Book.open(tmp_path / "b.db")
    book.bind_model(ts1l)
    book.set_label("head", 0, 9, label="<copies '.'>")
    book.set_label("neuron", 0, 5, label="unused")
    g = attribute(ts1l, "Once upon a time, there was a little girl named Lily. She", max_nodes=5,
                  labels=book.labelled())
    assert [n.label for n in g.nodes if n.kind == "head" and n.index == 9] == ["<copies '.'>"]
    assert all(n.label is None for n in g.nodes if not (n.kind == "head" and n.index == 9))
