"""Feature files for circuit-tracer's frontend: one per head / neuron node of a saved graph, validated against
their documented fields (circuit_tracer/frontend/feature_models.py: Example, ExamplesQuantile, Model, written
out here as strict pydantic models with extra fields forbidden), found the way their frontend finds them
(init-cg-feature-detail.js / init-feature-examples.js), and holding exactly the book's values and token strings.

The model is tinystories-656K (2 layers, so the per-layer folders matter), scanned on 40 stories, with circuits."""

from __future__ import annotations

import json
import math
from typing import List

import pytest
from pydantic import BaseModel, ConfigDict

from circuitbook.book import Book
from circuitbook.book import circuits as bc
from circuitbook.book import scan as bs
from circuitbook.cli import main
from circuitbook.graph import attribute
from circuitbook.graph.exchange import HEAD_BASE, LOADABLE, _ct_id
from circuitbook.graph.feature_files import FeatureFileError, write_for_frontend
from circuitbook.graph.saved import load, save, set_groups
from circuitbook.graph.supernodes import Supernode

PROMPT = "Once upon a time, there was a little girl named Lily. She"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Example(Strict):
    tokens_acts_list: List[float]
    train_token_ind: int
    is_repeated_datapoint: bool
    tokens: List[str]


class ExamplesQuantile(Strict):
    quantile_name: str
    examples: List[Example]


class FeatureFile(Strict):
    transcoder_id: str
    index: int
    examples_quantiles: List[ExamplesQuantile]
    top_logits: List[str]
    bottom_logits: List[str]
    act_min: float
    act_max: float
    quantile_values: List[float]
    histogram: List[float]
    activation_frequency: float


class Metadata(Strict):
    slug: str
    scan: str
    transcoder_list: List[str]
    prompt_tokens: List[str]
    prompt: str
    node_threshold: float | None = None


class Node(Strict):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class GraphFile(Strict):
    metadata: Metadata
    qParams: dict
    nodes: List[Node]
    links: List[dict]


class Listing(Strict):
    graphs: List[Metadata]


@pytest.fixture(scope="module")
def scanned(ts656k, stories_path, tmp_path_factory):
    from circuitbook.circuits.run import run_circuits
    from circuitbook.scan import scan_corpus

    text = stories_path.read_text(encoding="utf-8-sig")
    stories = [s.strip() for s in text.split("<|endoftext|>")[:40]]
    path = tmp_path_factory.mktemp("ff") / "book.db"
    book = Book.open(path)
    scan_corpus(ts656k, stories, book, progress=False, k=6, r=2, before=8, after=3)
    run_circuits(ts656k, book, None, progress=False)
    g = attribute(ts656k, PROMPT, max_nodes=30, max_edges=100)
    save(book, "lily", g, PROMPT, ts656k.fingerprint())
    heads = [n.id for n in g.nodes if n.kind == "head"][:2]
    set_groups(book, "lily", [Supernode("two heads", heads)])
    return path


def _frontend_path(root, d, node):
    """Where their frontend fetches a node's feature file (a "custom-" scan: transcoder_list[layer]), mapped
    the way their local server maps "./data/" onto its data folder."""
    m = d["metadata"]
    scan = m["transcoder_list"][int(node["layer"])] if m["scan"].startswith("custom-") else m["scan"]
    url = f"{scan}/{node['feature']}.json"
    assert url.startswith("./data/")
    return root / url[len("./data/"):]


def _want_examples(book, exs):
    strs = book.token_strs()
    out = []
    for ex in exs:
        keep = [i for i, t in enumerate(ex.tokens) if t >= 0]
        out.append(([strs[ex.tokens[i]] for i in keep],
                    [ex.values[i] if math.isfinite(ex.values[i]) else 0.0 for i in keep], keep.index(ex.focus)))
    return out


def _got_examples(q):
    return [(e.tokens, e.tokens_acts_list, e.train_token_ind) for e in q.examples]


def test_feature_files_schema_layout_and_book_values(scanned, tmp_path):
    book = Book.open(scanned, create=False, readonly=True)
    s = load(book, "lily")
    root = tmp_path / "ct"
    root.mkdir()
    r = write_for_frontend(book, s, root / "lily.json", root / "features" / "lily")
    d = json.loads((root / "lily.json").read_text())
    assert d == r.graph
    gm = GraphFile.model_validate(d)
    assert gm.metadata.scan.startswith("custom-")
    assert gm.metadata.transcoder_list == ["./data/features/lily/L0", "./data/features/lily/L1"]
    assert gm.qParams["supernodes"][0][0] == "two heads"
    [listed] = Listing.model_validate_json((root / "graph-metadata.json").read_text()).graphs
    assert listed == gm.metadata
    units = [n for n in s.graph.nodes if n.kind in ("head", "neuron")]
    assert {n.layer for n in units} == {0, 1}
    assert sum(x["feature_type"] == LOADABLE for x in d["nodes"]) == len(units)
    ct = {x["node_id"]: x for x in d["nodes"]}
    strs = book.token_strs()
    seen_files = set()
    for n in units:
        x = ct[_ct_id(n, s.graph)[0]]
        assert x["feature_type"] == LOADABLE and x["layer"] == str(n.layer)
        p = _frontend_path(root, d, x)
        assert p.is_file(), p
        seen_files.add(p)
        f = FeatureFile.model_validate_json(p.read_text())
        assert f.index == x["feature"]
        top = bs.top_examples(book, n.kind, n.layer, n.index)
        assert f.examples_quantiles[0].examples and _got_examples(f.examples_quantiles[0]) == _want_examples(book, top)
        assert [e.tokens_acts_list[e.train_token_ind] for e in f.examples_quantiles[0].examples] == [
            ex.values[ex.focus] for ex in top]
        for q in f.examples_quantiles:
            for e in q.examples:
                assert all(t in strs for t in e.tokens)  # the book's strings, not re-decoded text
        if n.kind == "neuron":
            assert x["feature"] == n.index
            st = bs.neuron_stats(book, n.layer, n.index)
            assert (f.act_min, f.act_max, f.activation_frequency) == (st.min, st.max, st.fire_rate)
            bands = bs.quantile_examples(book, n.layer, n.index)
            assert [_got_examples(q) for q in f.examples_quantiles[1:]] == [_want_examples(book, v)
                                                                            for v in bands.values()]
            for q, band in zip(f.examples_quantiles[1:], bands):
                lo, hi = bs.band_range(band, st.hist_exp)
                assert q.quantile_name == f"Activation in ({lo:.3g}, {hi:.3g}]"
            eff = bc.stored_neuron_output_effect(book, n.layer, n.index, k=10)
            assert f.top_logits == eff.top.strs and f.bottom_logits == eff.bottom.strs and len(f.top_logits) == 10
            assert sum(f.histogram) == sum(st.hist_counts) and f.histogram[0] > 0 and f.histogram[-1] > 0
            assert len(f.quantile_values) == 100 and f.quantile_values[-1] == st.max
            assert f.quantile_values == sorted(f.quantile_values)
            assert st.min <= f.quantile_values[0] and f.quantile_values[-1] <= st.max
        else:
            assert x["feature"] == HEAD_BASE + n.index * 1000 + n.src
            assert f.act_min == 0.0 and f.act_max == 1.0 and f.histogram == [] and f.bottom_logits == []
            want = bc.head_ov_top(book, n.layer, n.index, source=s.graph.tokens[n.src], k=10).strs
            assert f.top_logits == want and want  # the book keeps the top few of each OV row
        # a repeated datapoint is a (story, token) already shown higher up in the same file
        keys = [(ex.story, ex.offset) for ex in top]
        if n.kind == "neuron":
            keys += [(ex.story, ex.offset) for v in bands.values() for ex in v]
        flat = [e for q in f.examples_quantiles for e in q.examples]
        assert [e.is_repeated_datapoint for e in flat] == [k in keys[:i] for i, k in enumerate(keys)]
    assert seen_files == set(r.feature_paths)
    again = write_for_frontend(book, s, root / "lily.json", root / "features" / "lily")
    assert len(Listing.model_validate_json(again.metadata_path.read_text()).graphs) == 1


def test_refusals(scanned, tmp_path, ts656k, ts1l):
    book = Book.open(scanned, create=False, readonly=True)
    s = load(book, "lily")
    (tmp_path / "a").mkdir()
    with pytest.raises(FeatureFileError, match="must lie inside"):
        write_for_frontend(book, s, tmp_path / "a" / "lily.json", tmp_path / "elsewhere")
    bare = Book.open(tmp_path / "bare.db")
    bare.bind_model(ts656k)
    with pytest.raises(FeatureFileError, match="has no scan"):
        write_for_frontend(bare, s, tmp_path / "lily.json", tmp_path / "f")
    import dataclasses

    other = dataclasses.replace(s, model_fingerprint=ts1l.fingerprint())
    with pytest.raises(FeatureFileError, match="other units"):
        write_for_frontend(book, other, tmp_path / "lily.json", tmp_path / "f")
    assert not (tmp_path / "f").exists() and not (tmp_path / "lily.json").exists()  # nothing half-written


def test_cli_export_features(scanned, tmp_path, capsys):
    out = tmp_path / "lily.json"
    assert main(["graphs", str(scanned), "export", "lily", str(out), "--features", str(tmp_path / "features")]) == 0
    line = capsys.readouterr().out
    assert "feature files under" in line and "graph-metadata.json" in line and "note:" not in line
    d = json.loads(out.read_text())
    assert all(_frontend_path(tmp_path, d, x).is_file() for x in d["nodes"] if x["feature_type"] == LOADABLE)
    assert main(["graphs", str(scanned), "export", "lily", str(tmp_path / "x.json"), "--features",
                 str(tmp_path.parent)]) == 2
    assert "must lie inside" in capsys.readouterr().err
    assert main(["graphs", str(scanned), "export", "lily", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["metadata"]["transcoder_list"] == [] and LOADABLE not in {x["feature_type"] for x in plain["nodes"]}
