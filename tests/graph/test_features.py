"""Attribution graphs with transcoder features in place of the MLP: the conservation sums stay exact (ts-1l-dev
with a small trained transcoder, the superposition demo with its exact one, a 2-layer random GPT-Neo with a
random transcoder in layer 0), feature and error node values and edges against an independent autograd
twin, the error node is zero for an exact transcoder, and the CLI's --features."""

from __future__ import annotations

import json

import pytest
import torch

from circuitbook.dictionary import Dictionary, DictionaryConfig
from circuitbook.dictionary.activations import layer_io
from circuitbook.dictionary.graph import graph_transcoder
from circuitbook.errors import CircuitbookError
from circuitbook.graph import attribute, direct_logit, from_json, to_json
from circuitbook.graph.attribution import _backward, _setup
from circuitbook.graph.prune import attribute_pruned
from circuitbook.model import run
from circuitbook.web.links import node_url

from ..dictionary.conftest import exact_transcoder

TOKS = [5, 17, 3, 44, 9, 17, 28, 3]
PROMPT = "Once upon a time, there was a little girl named Lily. She"


@pytest.fixture(scope="module")
def sp_demo():
    from circuitbook.demo.superposition import build_superposition

    return build_superposition(0, n_stories=40)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_transcoder(model, layer=0, n=40, k=5, seed=3) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    d_model = model.cfg.d_model
    cfg = DictionaryConfig("transcoder", layer, d_model, n, "topk", k=k)
    return Dictionary.from_tensors(cfg, {"W_enc": torch.randn(d_model, n, generator=g) * 0.5,
                                         "b_enc": torch.randn(n, generator=g) * 0.1,
                                         "W_dec": torch.randn(n, d_model, generator=g) * 0.2,
                                         "b_dec": torch.randn(d_model, generator=g) * 0.1})


@pytest.fixture(scope="module")
def ts1l_transcoder(ts1l, stories_path):
    """A small transcoder of ts-1l-dev's MLP, trained for a few seconds on 40 stories (512 features, k 16)."""
    from circuitbook.corpus import read_stories
    from circuitbook.dictionary.config import TrainConfig
    from circuitbook.dictionary.trainer import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stories = [s for _, s in zip(range(40), read_stories(stories_path))]
        r = train(ts1l, stories, DictionaryConfig("transcoder", 0, ts1l.cfg.d_model, 512, "topk", k=16),
                  TrainConfig(tokens=8192, batch_size=1024, dead_tokens=4096), progress=False)
    finally:
        torch.set_num_threads(n)
    return r.dictionary


def _sums(g, model, toks_or_prompt, transcoders, tol):
    """Every conservation sum of the graph module docstring, on an unpruned graph."""
    toks = model.to_tokens(toks_or_prompt) if isinstance(toks_or_prompt, str) else torch.tensor([toks_or_prompt])
    logits = run(model.weights, toks)["logits"][0, g.pos]
    want = float(logits[g.target])
    assert g.logit == pytest.approx(want, abs=tol)
    # over the inputs: every input's value plus every constant's flow (the error nodes' total among them)
    inputs = sum(n.value for n in g.nodes if n.kind == "input")
    assert inputs + sum(g.bias_flow.values()) == pytest.approx(want, abs=tol)
    for l in {t.layer for t in transcoders}:
        errs = sum(n.value for n in g.nodes if n.kind == "error" and n.layer == l)
        assert g.bias_flow[f"blocks.{l}.transcoder.error"] == pytest.approx(errs, abs=1e-5)
    # direct terms: every node at pos plus the direct constants
    assert sum(n.direct for n in g.nodes if n.kind != "logit") + sum(g.constants.values()) == pytest.approx(want, abs=tol)
    dl = direct_logit(model, toks_or_prompt, g.target, pos=g.pos, transcoders=transcoders)
    assert dl.total() == pytest.approx(want, abs=tol)
    for l, f in dl.features.items():
        assert not dl.neurons[l].any()
        for n in g.nodes:
            if n.kind == "feature" and n.layer == l and n.pos == g.pos:
                assert n.direct == pytest.approx(float(f[n.index]), abs=1e-5)
            if n.kind == "error" and n.layer == l and n.pos == g.pos:
                assert n.direct == pytest.approx(dl.errors[l], abs=1e-5)
    # edges: out-edges add up to each node's value
    out = {}
    for e in g.edges:
        out[e.source] = out.get(e.source, 0.0) + e.weight
    for n in g.nodes[:-1]:
        assert out.get(n.id, 0.0) == pytest.approx(n.value, abs=tol), n.id
    assert not any(n.kind == "neuron" and n.layer in {t.layer for t in transcoders} for n in g.nodes)
    assert not any(e.target.startswith("error/") for e in g.edges)  # error nodes read nothing


def test_ts1l_with_a_trained_transcoder_sums_exactly(ts1l, ts1l_transcoder):
    t = graph_transcoder(ts1l_transcoder, 1, "tc", ts1l.cfg)
    g = attribute(ts1l, PROMPT, max_nodes=None, max_edges=None, transcoders=[t])
    plain = attribute(ts1l, PROMPT, max_nodes=0, max_edges=0)
    assert g.target == plain.target and g.logit == pytest.approx(plain.logit, abs=1e-5)  # same forward, same logit
    _sums(g, ts1l, PROMPT, [t], tol=2e-3)
    feats = [n for n in g.nodes if n.kind == "feature"]
    errs = [n for n in g.nodes if n.kind == "error"]
    assert feats and all(n.id == f"feature/1/{n.index}/{n.pos}" and n.group == 1 for n in feats)
    assert 0 < len({(n.pos, n.index) for n in feats}) <= 16 * len(g.tokens)  # k active features per position
    # the trained transcoder is not exact: the error at the target position is real, and its node says so
    err = next(n for n in errs if n.pos == g.pos)
    assert err.activation > 1e-3 and err.id == f"error/0/{g.pos}" and err.stage == 2
    assert g.settings["transcoders"] == [{"layer": 0, "number": 1, "name": "tc"}]
    # the inputs' sum with the backward directly (as test_attribution does for neurons)
    s = _setup(ts1l, PROMPT, g.target, -1, None, [t])
    bw = _backward(ts1l.weights, s)
    assert float(bw.v_inputs.sum()) + sum(bw.bias_flow.values()) == pytest.approx(g.logit, abs=2e-3)


def test_ts1l_feature_values_match_an_independent_hook(ts1l, ts1l_transcoder):
    """A feature's value in a 1-layer model is act * (W_dec[i] . d logit / d mlp_out) with the final norm frozen:
    computed here with the dictionary's own encode on layer_io's input and autograd through a forward hook."""
    d = ts1l_transcoder
    t = graph_transcoder(d, 1, "tc", ts1l.cfg)
    g = attribute(ts1l, PROMPT, max_nodes=None, max_edges=0, transcoders=[t])
    toks = ts1l.to_tokens(PROMPT)
    x, y = layer_io(ts1l, 0, "transcoder", toks)
    x, y = x.clone(), y.clone()
    with torch.no_grad():
        acts = d.encode(x)  # [pos, d_sae]
    c = {k: v.clone() for k, v in run(ts1l.weights, toks, ["ln_final.hook_scale", "blocks.0.hook_resid_mid"]).items()}
    w = ts1l.weights
    p = g.pos
    resid_mid = c["blocks.0.hook_resid_mid"][0, p]
    f = acts[p].clone().requires_grad_(True)
    err = (y[p] - d.decode(acts[p])).detach()
    z = err.clone().requires_grad_(True)
    resid = resid_mid + f @ d.W_dec.detach() + d.b_dec.detach() + z
    xc = resid - resid.mean()
    logit = (xc / c["ln_final.hook_scale"][0, p] * w.lnf_w + w.lnf_b) @ w.W_U[:, g.target] + w.b_U[g.target]
    assert float(logit.detach()) == pytest.approx(g.logit, abs=1e-3)
    grad, e_grad = torch.autograd.grad(logit, [f, z])
    checked = checked_err = 0
    for n in g.nodes:
        if n.kind == "feature":
            assert n.pos == p  # 1-layer: only the target position's features reach the logit
            assert n.activation == pytest.approx(float(acts[p, n.index]), rel=1e-4, abs=1e-5)
            assert n.value == pytest.approx(float(acts[p, n.index] * grad[n.index]), abs=1e-4), n.id
            checked += 1
        if n.kind == "error":
            assert n.pos == p and n.value == pytest.approx(float(err @ e_grad), abs=1e-4)
            checked_err += 1
    assert checked == int((acts[p] > 0).sum()) and checked_err == 1  # every active feature, the one error node


class FeatureTwin:
    """The frozen model written out from the weights with layer ``layer``'s MLP replaced by a transcoder:
    feature gates from the dictionary's own encode (on layer_io's input), the error from layer_io's target,
    probes on every node output; autograd gives each node's value. Independent of graph/attribution.py."""

    def __init__(self, model, d: Dictionary, tokens, pos, target):
        from circuitbook.model import run as frun

        w = model.weights
        self.w, self.cfg, self.T, self.pos, self.d = w, w.cfg, len(tokens), pos, d
        self.tokens = torch.as_tensor(tokens)
        L = self.cfg.n_layers
        names = [f"blocks.{l}.{n}" for l in range(L) for n in
                 ("ln1.hook_scale", "attn.hook_pattern", "ln2.hook_scale", "mlp.hook_pre", "mlp.hook_post")]
        c = {k: v[0].clone() for k, v in frun(w, self.tokens[None], names + ["ln_final.hook_scale"]).items()}
        self.s1 = [c[f"blocks.{l}.ln1.hook_scale"] for l in range(L)]
        self.s2 = [c[f"blocks.{l}.ln2.hook_scale"] for l in range(L)]
        self.patt = [c[f"blocks.{l}.attn.hook_pattern"] for l in range(L)]
        self.gamma = [c[f"blocks.{l}.mlp.hook_post"] / c[f"blocks.{l}.mlp.hook_pre"] for l in range(L)]
        self.sf = c["ln_final.hook_scale"]
        x, y = (t.clone() for t in layer_io(model, d.cfg.layer, "transcoder", self.tokens[None]))
        pre = d.pre(x)
        self.acts = d.encode(x).detach()
        self.fgamma = torch.where(self.acts != 0, self.acts / pre, torch.zeros_like(pre)).detach()
        self.err = (y - d.decode(self.acts)).detach()
        self.u, self.ub = w.W_U[:, target], w.b_U[target]

    def ln(self, x, wt, b, s):
        x = x - x.mean(-1, keepdim=True)
        return x / s * wt + b

    def run(self):
        w, T, H, d = self.w, self.T, self.cfg.n_heads, self.cfg.d_model
        D = self.d
        E = w.W_E[self.tokens] + w.W_pos[:T]
        probes = {"input": torch.zeros(T, d, requires_grad=True)}
        outs = {"input": E}
        resid = E + probes["input"]
        for l in range(self.cfg.n_layers):
            x = self.ln(resid, w.ln1_w[l], w.ln1_b[l], self.s1[l])
            v = torch.einsum("kd,hde->khe", x, w.W_V[l]) + w.b_V[l]
            ho = self.patt[l][..., None] * torch.einsum("khe,hed->hkd", v, w.W_O[l])[:, None]
            probes[f"head{l}"] = torch.zeros(H, T, T, d, requires_grad=True)
            outs[f"head{l}"] = ho
            resid = resid + (ho + probes[f"head{l}"]).sum((0, 2)) + w.b_O[l]
            x = self.ln(resid, w.ln2_w[l], w.ln2_b[l], self.s2[l])
            if l == D.cfg.layer:
                post = self.fgamma * (x @ D.W_enc.detach() + D.b_enc.detach())
                fo = post[..., None] * D.W_dec.detach()
                probes["feature"] = torch.zeros_like(fo, requires_grad=True)
                probes["error"] = torch.zeros(T, d, requires_grad=True)
                outs["feature"], outs["error"] = fo, self.err
                resid = resid + (fo + probes["feature"]).sum(1) + D.b_dec.detach() + self.err + probes["error"]
                continue
            post = self.gamma[l] * (x @ w.W_in[l] + w.b_in[l])
            no = post[..., None] * w.W_out[l]
            probes[f"neuron{l}"] = torch.zeros_like(no, requires_grad=True)
            outs[f"neuron{l}"] = no
            resid = resid + (no + probes[f"neuron{l}"]).sum(1) + w.b_out[l]
        logit = self.ln(resid[self.pos], w.lnf_w, w.lnf_b, self.sf[self.pos]) @ self.u + self.ub
        grads = torch.autograd.grad(logit, list(probes.values()))
        return logit.detach(), {k: o.detach() for k, o in outs.items()}, dict(zip(probes, grads))

    def value(self, node_id, outs, grads):
        p = node_id.split("/")
        if p[0] == "input":
            k = int(p[1])
            return float(outs["input"][k] @ grads["input"][k])
        if p[0] == "head":
            l, h, q, k = map(int, p[1:])
            return float(outs[f"head{l}"][h, q, k] @ grads[f"head{l}"][h, q, k])
        if p[0] == "feature":
            _, i, q = map(int, p[1:])
            return float(outs["feature"][q, i] @ grads["feature"][q, i])
        if p[0] == "error":
            q = int(p[2])
            return float(outs["error"][q] @ grads["error"][q])
        l, i, q = map(int, p[1:])
        return float(outs[f"neuron{l}"][q, i] @ grads[f"neuron{l}"][q, i])


def test_two_layer_values_match_the_autograd_twin(neo):
    """Layer 0's MLP replaced in a 2-layer model: features and error nodes away from the target position
    reach the logit through layer 1, and every node's value equals the twin's."""
    d = _random_transcoder(neo)
    t = graph_transcoder(d, 4, "rand", neo.cfg)
    pos, target = 6, 13
    g = attribute(neo, TOKS, target, pos=pos, max_nodes=None, max_edges=None, transcoders=[t])
    _sums(g, neo, TOKS, [t], tol=1e-4)
    twin = FeatureTwin(neo, d, TOKS, pos, target)
    logit, outs, grads = twin.run()
    assert float(logit) == pytest.approx(g.logit, abs=1e-4)
    for n in g.nodes[:-1]:
        assert n.value == pytest.approx(twin.value(n.id, outs, grads), abs=1e-4), n.id
    assert any(n.kind == "feature" and n.pos != pos for n in g.nodes)  # through layer 1's heads
    assert any(n.kind == "error" and n.pos != pos and abs(n.value) > 1e-4 for n in g.nodes)
    assert any(n.kind == "neuron" and n.layer == 1 for n in g.nodes)  # layer 1 keeps its neurons
    assert any(e.source.startswith("error/") and e.target.startswith("head/1/") for e in g.edges)
    assert any(e.source.startswith("feature/") and e.target.startswith("neuron/1/") for e in g.edges)
    assert any(e.target.startswith("feature/") for e in g.edges)  # features read the heads and inputs


def test_exact_transcoder_has_a_zero_error_node(sp_demo):
    m = sp_demo.model
    t = graph_transcoder(exact_transcoder(sp_demo), 1, "exact", m.cfg)
    toks = m.to_tokens(sp_demo.stories[0])[0][:24].tolist()
    g = attribute(m, toks, max_nodes=None, max_edges=None, transcoders=[t])
    _sums(g, m, toks, [t], tol=1e-4)
    # no node is dropped for a zero value: error nodes and features of every position are candidates
    s = _setup(m, toks, g.target, -1, None, [t])
    assert float(s.trace.err[0].abs().max()) < 1e-4  # the MLP's output is the transcoder's, position by position
    errs = [n for n in g.nodes if n.kind == "error"]
    assert all(abs(n.value) < 1e-5 and n.activation < 1e-4 for n in errs)
    assert abs(g.bias_flow["blocks.0.transcoder.error"]) < 1e-5
    feats = [n for n in g.nodes if n.kind == "feature"]
    assert feats and max(abs(n.value) for n in feats) > 0.1  # the planted rule at the target carries the logit
    # the exact transcoder's direct terms equal the neurons' (same MLP output at pos)
    plain = direct_logit(m, toks, g.target)
    dl = direct_logit(m, toks, g.target, transcoders=[t])
    assert float(dl.features[0].sum()) + dl.constants["blocks.0.transcoder.b_dec"] == pytest.approx(
        float(plain.neurons[0].sum()) + plain.constants["blocks.0.mlp.b_out"], abs=1e-4)


def test_json_round_trip_links_and_pruning(neo):
    d = _random_transcoder(neo)
    t = graph_transcoder(d, 2, "rand", neo.cfg)
    g = attribute(neo, TOKS, 13, pos=6, max_nodes=25, max_edges=60, transcoders=[t],
                  labels={("feature", 2, 0): "feature zero"})
    back = from_json(json.loads(json.dumps(to_json(g))))
    assert [(n.id, n.group, n.kind) for n in back.nodes] == [(n.id, n.group, n.kind) for n in g.nodes]
    f = next(n for n in g.nodes if n.kind == "feature")
    assert node_url(f) == f"/feature/2/{f.index}" and f.title.startswith("L0 F2.")
    assert all(n.label == "feature zero" for n in g.nodes if n.kind == "feature" and n.index == 0)
    e = [n for n in g.nodes if n.kind == "error"]
    assert all(node_url(n) is None for n in e)
    from circuitbook.graph.exchange import export_graph
    from circuitbook.graph.supernodes import auto_groups

    full = attribute(neo, TOKS, 13, pos=6, max_nodes=None, max_edges=None, transcoders=[t])
    ct = export_graph(full, "g", "p")  # circuit-tracer JSON: every node id distinct, error nodes typed as theirs
    assert len({n["node_id"] for n in ct["nodes"]}) == len(full.nodes)
    assert {n["feature_type"] for n in ct["nodes"]} >= {"mlp feature", "mlp reconstruction error"}
    unit = next(s for s in auto_groups(full) if s.rule == "unit" and s.members[0].startswith("feature/"))
    assert unit.name.startswith("F2.")  # grouped by the unit feature/2/idx, its key F2.idx
    pg, rep = attribute_pruned(neo, TOKS, 13, pos=6, transcoders=[t])
    assert rep.kept + rep.dropped == pytest.approx(rep.total, rel=1e-6)
    assert pg.settings["transcoders"][0]["number"] == 2


def test_bad_transcoders_are_refused(neo, sp_demo):
    d = _random_transcoder(neo)
    with pytest.raises(CircuitbookError, match="d_model is 32"):
        graph_transcoder(_random_transcoder(sp_demo.model), 1, "wide", neo.cfg)
    t = graph_transcoder(d, 1, "a", neo.cfg)
    with pytest.raises(CircuitbookError, match="two transcoders replace layer 0"):
        attribute(neo, TOKS, transcoders=[t, t])
    sae = Dictionary(DictionaryConfig("sae", 0, 32, 8, "relu"))
    with pytest.raises(CircuitbookError, match="is an SAE"):
        graph_transcoder(sae, 1, "s", neo.cfg)
    skip = Dictionary(DictionaryConfig("skip-transcoder", 0, 32, 8, "relu"))
    with pytest.raises(CircuitbookError, match="skip-transcoder"):
        graph_transcoder(skip, 1, "k", neo.cfg)
    far = Dictionary(DictionaryConfig("transcoder", 5, 32, 8, "relu"))
    with pytest.raises(CircuitbookError, match="layer 5"):
        graph_transcoder(far, 1, "f", neo.cfg)


def test_cli_graph_features(ts1l_dir, ts1l, ts1l_transcoder, tmp_path, capsys):
    from circuitbook.book import Book
    from circuitbook.cli import main
    from circuitbook.dictionary.store import save_to_book

    b = tmp_path / "b.db"
    book = Book.open(b)
    book.bind_model(ts1l)
    number = save_to_book(book, "tc", ts1l_transcoder, model=ts1l)
    book.set_label("feature", number, 0, label="feature zero")
    book.close_all()
    j = tmp_path / "g.json"
    rc = main(["graph", str(ts1l_dir), "The cat sat on the", "--book", str(b), "--features", "tc", "--nodes", "30",
               "--json", str(j), "--save", "feat"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "layer 0 MLP -> transcoder 'tc'" in out and "error nodes carry" in out
    g = from_json(json.loads(j.read_text()))
    assert any(n.kind == "feature" for n in g.nodes) and not any(n.kind == "neuron" for n in g.nodes)
    assert main(["graphs", str(b), "recompute", "feat", "--model", str(ts1l_dir)]) == 0
    assert "same model" in capsys.readouterr().out
