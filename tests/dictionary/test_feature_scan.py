"""Dictionary features in the scan (``scan --features``): exact statistics against brute force, the planted
rules of the superposition demo read off the features' examples, neurons' tables unchanged, shards merged
equal, feature pages and explanations from the scan, bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from circuitbook.book import Book
from circuitbook.book import scan as bs
from circuitbook.cli import main
from circuitbook.corpus import SEPARATOR
from circuitbook.dictionary.features import feature_acts
from circuitbook.dictionary.scan import feature_sources
from circuitbook.dictionary.store import save_to_book
from circuitbook.scan import ScanSettings, merge_books, scan_corpus

from .conftest import exact_transcoder

K = 8


@pytest.fixture(scope="module")
def world(sp_demo, sp_dir, tmp_path_factory):
    """The superposition demo's model dir and corpus, and a book holding its exact transcoder (dictionary 0)."""
    d = tmp_path_factory.mktemp("featscan")
    corpus = d / "stories.txt"
    corpus.write_text(f"\n{SEPARATOR}\n".join(sp_demo.stories[:60]) + "\n")
    base = d / "dict.db"
    b = Book.open(base)
    b.bind_model(sp_demo.model)
    save_to_book(b, "exact", exact_transcoder(sp_demo), model=sp_demo.model)
    b.close()
    return d, corpus, base


def _copy(src, dst):
    import shutil

    shutil.copy(src, dst)
    return dst


def _scan(model, corpus, book, sources=(), **kw):
    return scan_corpus(model, str(corpus), book, ScanSettings(k=K, batch_size=4, **kw), progress=False, sources=sources)


def test_feature_statistics_equal_brute_force_and_read_the_planted_classes(sp_demo, world, tmp_path):
    m, truth = sp_demo.model, sp_demo.truth
    _, corpus, base = world
    book = _copy(base, tmp_path / "b.db")
    b = Book.open(book)
    sources = feature_sources(m, b, ["exact"])
    _scan(m, corpus, b, sources)
    # brute force: every story's sequence through feature_acts, positions after BOS
    d = exact_transcoder(sp_demo)
    vals, toks = [], []
    for s in sp_demo.stories[:60]:
        t = m.to_tokens(s)
        f = feature_acts(m, d, t)[0, 1:]
        vals.append(f)
        toks.append(t[0, 1:])
    A, T = torch.cat(vals).double(), torch.cat(toks)
    rules = list(truth["rules"].values())
    for r, rule in enumerate(rules):
        st = bs.unit_stats(b, "feature", 0, r)
        assert st.count == A.shape[0]
        assert st.mean == pytest.approx(float(A[:, r].mean()), abs=2 ** -12)  # sums on the scan's 2**-12 grid
        assert st.max == pytest.approx(float(A[:, r].max()), rel=1e-6)
        assert st.fire_rate == pytest.approx(float((A[:, r] > 0).double().mean()))
        top = bs.top_examples(b, "feature", 0, r)
        assert len(top) == K and top[0].value == pytest.approx(float(A[:, r].max()), rel=1e-6)
        assert [e.value for e in top] == sorted((e.value for e in top), reverse=True)
        for e in top:  # the focus token of every top example is one of the rule's input tokens
            assert e.tokens[e.focus] in set(rule["reads"])
        means = bs.token_means(b, 0, r, kind="feature")
        assert means and {t.token_id for t in means[:3]} <= set(rule["reads"])
        tid = means[0].token_id
        sel = A[T == tid, r]
        assert means[0].mean == pytest.approx(float(sel.mean()), abs=2 ** -12) and means[0].count == len(sel)
    sec = bs.read_unit(b, "feature", 0, 3)
    assert sec is not None and sec.top and sec.quantiles
    b.close()


def _tables(path, where=""):
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out = {t: sorted(c.execute(f"SELECT * FROM {t} {where if t == 'scan_examples' else ''}").fetchall())
           for t in bs.RESULT_TABLES}
    c.close()
    return out


def test_neuron_tables_are_unchanged_and_shards_merge_to_the_same_book(sp_demo, world, tmp_path):
    m = sp_demo.model
    _, corpus, base = world
    plain, feats = _copy(base, tmp_path / "plain.db"), _copy(base, tmp_path / "feats.db")
    _scan(m, corpus, plain)
    b = Book.open(feats)
    sources = feature_sources(m, b, ["exact"])
    _scan(m, corpus, b, sources)
    b.close()
    got, want = _tables(feats, "WHERE kind != 'feature'"), _tables(plain)
    for t in ("scan_neurons", "scan_heads", "scan_token_means", "scan_head_pairs", "scan_examples"):
        assert got[t] == want[t], t
    assert not want["scan_unit_stats"] and len(got["scan_unit_stats"]) == 8
    shards = []
    for i in range(2):
        p = _copy(base, tmp_path / f"s{i}.db")
        sb = Book.open(p)
        _scan(m, corpus, sb, feature_sources(m, sb, ["exact"]), shard=(i, 2))
        sb.close()
        shards.append(p)
    merged = _copy(base, tmp_path / "merged.db")
    merge_books(shards, merged)
    assert _tables(merged) == _tables(feats)


def test_a_finished_neuron_scan_is_rescanned_with_features_and_explained(sp_demo, sp_dir, world, tmp_path, capsys):
    """The CLI: a book scanned without features, then --features: scanned again (no --overwrite), the feature
    pages show the scan, and `explain` proposes rules for the features from their exact statistics."""
    _, corpus, base = world
    book = _copy(base, tmp_path / "cli.db")
    args = ["scan", str(sp_dir), "--corpus",
            str(corpus), "--book", str(book), "--k", str(K), "--no-progress"]
    assert main(args) == 0
    assert main(args + ["--features", "exact"]) == 0
    b = Book.open(book, readonly=True)
    assert len(b.conn.execute("SELECT * FROM scan_unit_stats").fetchall()) == 8
    ident = json.loads(b.conn.execute("SELECT identity FROM scan_state").fetchone()[0])
    assert ident["sources"][0]["dictionary"] == "exact"
    b.close()
    capsys.readouterr()
    assert main(["explain", str(book), "--no-model"]) == 0
    from circuitbook.book import explanations as be

    from circuitbook.explain.program import program_from_dict
    from circuitbook.explain.run import resolver_for

    b = Book.open(book, readonly=True)
    cur, R = be.current(b), resolver_for(b)
    rules = list(sp_demo.truth["rules"].values())
    hits = 0
    for r, rule in enumerate(rules):
        e = cur.get(("feature", 0, r))
        assert e is not None and e["author"] == "auto"
        prog = program_from_dict(e["program"], "test")
        ids = {int(t) for c in prog.clauses if c.tokens is not None for t in R.ids(c.tokens)}
        hits += bool(ids) and ids <= set(rule["reads"])
    assert hits >= 6, hits  # the planted input classes, read off the features' scan
    from fastapi.testclient import TestClient

    from circuitbook.web import create_app

    page = TestClient(create_app(b), base_url="http://127.0.0.1").get("/feature/0/2").text
    assert "Top activations" in page
    b.close()


def test_bad_features_arguments_are_refused_cleanly(sp_dir, world, tmp_path, capsys):
    _, corpus, base = world
    mdir = sp_dir
    book = _copy(base, tmp_path / "bad.db")
    before = book.read_bytes()
    for argv, msg in ((["--features", "nosuch"], "no dictionary 'nosuch'"),):
        rc = main(["scan", str(mdir), "--corpus", str(corpus), "--book", str(book), "--no-progress", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], err
        assert book.read_bytes() == before
    missing = tmp_path / "missing.db"
    rc = main(["scan", str(mdir), "--corpus", str(corpus), "--book", str(missing), "--features", "exact"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0] and not missing.exists(), err


def test_features_scanned_on_the_local_executor_equal_one_process(sp_dir, world, tmp_path, capsys):
    """Feature harvesting scales out like the scan (issue 18): `scan --features --shards 2 --executor local`
    (each worker reads the dictionary from the book) writes the very tables of a one-process scan."""
    _, corpus, base = world
    one, two = _copy(base, tmp_path / "one.db"), _copy(base, tmp_path / "two.db")
    common = ["scan", str(sp_dir), "--corpus", str(corpus), "--k", str(K), "--batch-size", "4", "--no-progress",
              "--features", "exact"]
    assert main(common + ["--book", str(one)]) == 0
    assert main(common + ["--book", str(two), "--shards", "2", "--executor", "local"]) == 0
    assert "2 shards on local" in capsys.readouterr().out
    got, want = _tables(two), _tables(one)
    assert got == want and len(want["scan_unit_stats"]) == 8
    c = sqlite3.connect(f"file:{two}?mode=ro", uri=True)
    assert c.execute("SELECT count(*) FROM dictionaries").fetchone()[0] == 1  # the merge kept the dictionary
    c.close()


def _explained_features(sp_demo, world, path):
    """A copy of the world's book, scanned with the exact transcoder's features and their explanations."""
    from circuitbook.explain.run import explain_book

    _, corpus, base = world
    b = Book.open(_copy(base, path))
    _scan(sp_demo.model, corpus, b, feature_sources(sp_demo.model, b, ["exact"]))
    explain_book(b, None, kinds=["feature"])
    return b


def test_features_are_scored_and_the_ablation_equals_a_brute_force_forward(sp_demo, world, tmp_path):
    """Explanations of the exact transcoder's features, scored on held-out stories (explain.score with the
    feature Access): the planted features simulate well, and each ablation score equals the one computed from
    real forwards whose MLP output gets (replacement - activation) x W_dec[i] added (error term kept)."""
    from circuitbook.dictionary.access import register_feature_access
    from circuitbook.explain.access import ACCESS
    from circuitbook.explain.run import resolver_for, scoring_items
    from circuitbook.explain.score import ScoreSettings, collect, score_units
    from circuitbook.explain.simulate import simulate_activation
    from circuitbook.handcraft.evaluate import recovered
    from circuitbook.model import run

    m = sp_demo.model
    b = _explained_features(sp_demo, world, tmp_path / "score.db")
    assert not scoring_items(b)  # without the feature Access the scorer skips features
    assert register_feature_access(m, b)
    try:
        items = scoring_items(b, ["feature"])
        assert len(items) == 8
        st = ScoreSettings(ablation_tokens=300)
        held = sp_demo.stories[60:120]
        ho = collect(m, held, {("feature", 0)}, st)
        scores, _, _ = score_units(m, ho, items, resolver_for(b), st)
    finally:
        ACCESS.pop("feature", None)
    sims = sorted(s.simulation for s in scores)
    # mean-ablating a planted feature moves the held-out loss by 0.002-0.02 nats either way (a handcrafted
    # model): far above the tolerance of the brute-force comparison below
    assert sum(abs(s.carry) > 1e-3 for s in scores) >= 6, [s.carry for s in scores]
    assert sims[len(sims) // 2] >= 0.8, sims
    d = exact_transcoder(sp_demo)
    tok = torch.as_tensor(ho.tokens[ho.abl_seqs])
    val = torch.as_tensor(ho.valid[ho.abl_seqs])
    a_all = feature_acts(m, d, tok)  # an independent path to the activations

    def loss(delta=None, i=None):
        iv = None
        if delta is not None:
            def fn(x):
                return x + (delta[..., None] * d.W_dec[i].detach()).to(x)
            iv = {"blocks.0.hook_mlp_out": fn}
        logits = run(m.weights, tok, ("logits",), iv)["logits"][:, :-1].float()
        lp = logits.log_softmax(-1).gather(-1, tok[:, 1:, None])[..., 0]
        return float(-lp[val[:, 1:] & val[:, :-1]].double().mean())

    l_orig = loss()
    R = resolver_for(b)
    for (kind, layer, idx, _, _, prog), sc in zip(items, scores):
        a = a_all[..., idx].double()
        mean = float(torch.as_tensor(ho.acts[("feature", 0)][..., idx][ho.flat]).double().mean())
        sim = torch.as_tensor(simulate_activation(prog, ho.tokens, R, ho.valid)[ho.abl_seqs]).double()
        keep = torch.zeros_like(a, dtype=torch.bool)
        keep[:, 0] = True  # BOS keeps its activation
        l_mean = loss(torch.where(keep, 0.0, mean - a).float(), idx)
        l_sim = loss(torch.where(keep, 0.0, sim - a).float(), idx)
        assert sc.carry == pytest.approx(l_mean - l_orig, abs=2e-5)
        assert sc.ablation == pytest.approx(recovered(l_mean, l_sim, l_orig), abs=2e-3)
    b.close()


def test_feature_scorecard_splices_the_explanations_with_the_error_term_kept(sp_demo, world, tmp_path):
    """The scorecard of the exact transcoder's features (explanations from their scan): every feature
    simulated recovers the loss of mean-ablating them all; the all-ablated figure equals a brute-force forward
    (MLP output + (mean - activation) @ W_dec at every position after BOS)."""
    from circuitbook.dictionary.access import register_feature_access
    from circuitbook.explain.access import ACCESS
    from circuitbook.explain.score import ScoreSettings, collect
    from circuitbook.explain.scorecard import scorecard
    from circuitbook.model import run

    m = sp_demo.model
    b = _explained_features(sp_demo, world, tmp_path / "card.db")
    held = sp_demo.stories[60:120]
    assert register_feature_access(m, b)
    try:
        card = scorecard(b, m, held, ScoreSettings(), curve_points=4, kind="feature")
        ho = collect(m, held, {("feature", 0)}, ScoreSettings())
    finally:
        ACCESS.pop("feature", None)
    assert card.n_explained == 8 and card.n_units == 8
    assert card.recovered == pytest.approx(1.0, abs=0.05), card.summary()
    d = exact_transcoder(sp_demo)
    tot, n = 0.0, 0
    for s in range(0, ho.tokens.shape[0], 8):
        tok, val = torch.as_tensor(ho.tokens[s:s + 8]), torch.as_tensor(ho.valid[s:s + 8])
        a = feature_acts(m, d, tok)
        mean = torch.as_tensor(ho.acts[("feature", 0)][ho.flat].astype("float64").mean(0)).float()
        delta = mean - a
        delta[:, 0] = 0.0

        def fn(x, delta=delta):
            return x + delta @ d.W_dec.detach()
        logits = run(m.weights, tok, ("logits",), {"blocks.0.hook_mlp_out": fn})["logits"][:, :-1].float()
        lp = logits.log_softmax(-1).gather(-1, tok[:, 1:, None])[..., 0]
        mk = val[:, 1:] & val[:, :-1]
        tot -= float(lp[mk].double().sum())
        n += int(mk.sum())
    assert card.ce_ablated == pytest.approx(tot / n, abs=1e-4)
    b.close()
