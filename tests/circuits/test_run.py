"""run_circuits end to end: stored results agree with the pure functions, resume after interruption."""

import pytest
import torch

from circuitbook.book import Book
from circuitbook.book import circuits as bc
from circuitbook.circuits import (CircuitsSettings, composition_scores, detector_scores, make_basis, ov_tops,
                                  run_circuits)
from circuitbook.circuits import run as run_mod

SMALL = CircuitsSettings(k=5, k_rows=3, n_pairs=20, n_trigrams=10, n_virtual=2, max_stories=40, max_tokens=3000,
                         detector_seqs=4, detector_len=10)


@pytest.fixture(scope="module")
def demo_book(demo, tmp_path_factory):
    book = Book.open(tmp_path_factory.mktemp("c") / "demo.db")
    summ = run_circuits(demo.model, book, demo.stories, SMALL, progress=False)
    return book, summ


def test_demo_results_in_the_book(demo, demo_book):
    book, summ = demo_book
    truth, model = demo.truth, demo.model
    assert summ.computed > 0 and summ.skipped == 0
    ch = truth["copy_head"]
    for name in truth["classes"]["NAME"]:
        assert bc.head_ov_top(book, 0, ch, source=name, k=1).ids == [name]
    assert summ.copying[0][:2] == (0, ch)
    scores = bc.head_scores(book)[(0, ch)]
    assert scores["ov_copying"] > 0.99 and 0 <= scores["induction"] <= 1
    # stored pairs equal the pure function's
    t = ov_tops(make_basis(model, bc.summary(book, "scales") and run_mod.NormScales(**bc.summary(book, "scales"))),
                0, ch, 3, 20)
    pairs = bc.head_ov_top(book, 0, ch)
    assert [(p.row, p.col) for p in pairs] == list(zip(t.top_pairs.rows.tolist(), t.top_pairs.cols.tolist()))
    assert pairs[0].row_str == model.tokenizer.token_str(pairs[0].row)
    n = truth["pronoun_verb"]
    writes = set(truth["rules"]["pronoun_verb"]["writes"])
    assert set(bc.stored_neuron_output_effect(book, 0, n, k=5).top.ids) <= writes
    assert set(bc.stored_neuron_input_effect(book, 0, n, k=5).top.ids) <= set(truth["rules"]["pronoun_verb"]["reads"])
    assert bc.stored_neuron_input_effect(book, 0, n, via=(0, ch)) is not None
    assert [v for v, _ in bc.neuron_paths(book, "neuron_in", 0, n)][0] in ("", "L0H0", "L0H1", "L0H2", "L0H3")
    d = bc.summary(book, "direct_path_loss")
    assert d["direct"] > d["full"] and d["n_tokens"] > 0
    assert bc.summary(book, "scales")["source"].startswith("measured")
    big = bc.bigram_top(book, model.tokenizer.to_id("Ġthe"), k=3)
    assert len(big) == 3 and big.values[0] <= 0  # log-probs
    assert bc.positional_profile(book, 0, ch) is not None and len(bc.stored_skip_trigrams(book, 0, ch)) <= 10
    assert bc.stored_composition(book, "Q") is None  # one layer
    det = bc.stored_detector_scores(book)
    assert len(det["induction"]) == 1 and len(det["induction"][0]) == model.cfg.n_heads


def test_unit_sections_and_html(demo, demo_book):
    book, _ = demo_book
    u = book.neuron(0, demo.truth["search"])
    sec = u["circuits"]
    assert {"output", "input"} <= set(sec) and len(sec["output"]["top"]) == 5
    h = book.head(0, demo.truth["copy_head"])
    assert "ov_top" in h["circuits"] and "scores" in h["circuits"]
    html = h._repr_html_() + u._repr_html_()
    assert "OV source" in html and "<script" not in html


def test_rerun_skips_everything(demo, demo_book):
    book, summ = demo_book
    again = run_circuits(demo.model, book, demo.stories, SMALL, progress=False)
    assert again.computed == 0 and again.skipped == summ.computed
    assert book.runs("circuits")[-1]["status"] == "done"


def test_interrupted_run_resumes(ts656k_dir, tmp_path, monkeypatch):
    from circuitbook.model import load_model

    model = load_model(ts656k_dir)
    s = CircuitsSettings(k=3, k_rows=2, n_pairs=10, n_trigrams=5, n_virtual=2, detector_seqs=4, detector_len=10)
    book = Book.open(tmp_path / "b.db")
    real, calls = run_mod._run_task, []

    def flaky(task, *a):
        calls.append(task)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(task, *a)

    monkeypatch.setattr(run_mod, "_run_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_circuits(model, book, None, s, progress=False)
    assert len(bc.done_tasks(book)) == 5 and book.runs("circuits")[-1]["status"] == "interrupted"
    monkeypatch.setattr(run_mod, "_run_task", real)
    summ = run_circuits(model, book, None, s, progress=False)
    assert summ.skipped == 5 and summ.computed > 0

    # real 2-layer model: composition and detectors are stored and equal the pure functions
    cs = composition_scores(model)
    for m in "QKV":
        assert abs(bc.stored_composition(book, m) - cs[m].numpy()).max() < 1e-6
    det = detector_scores(model, 4, 10, 0, exclude=(1, 2))
    stored = bc.stored_detector_scores(book)
    for name in ("previous_token", "induction", "duplicate_token"):
        assert abs(torch.tensor(stored[name]) - det[name]).max() < 1e-5
    assert len(bc.virtual_heads(book)) == 2 and bc.virtual_head_top(book, *bc.top_compositions(book, "V", 1)[0][:4])
    assert bc.positional_profile(book, 0, 0) is None  # rotary: not applicable
    assert any("rotary" in n for n in bc.summary(book, "notes"))
    assert any("V-composition" in line for line in summ.lines())


def test_other_settings_recompute_everything(neo_1l, tmp_path):
    book = Book.open(tmp_path / "b.db")
    s = CircuitsSettings(k=3, k_rows=2, n_pairs=10, detector_seqs=2, detector_len=5)
    first = run_circuits(neo_1l, book, None, s, progress=False)
    assert len(bc.stored_neuron_output_effect(book, 0, 0).top) == 3 and not book.vocab_size()
    again = run_circuits(neo_1l, book, None, CircuitsSettings(**{**s.__dict__, "k": 4}), progress=False)
    assert again.skipped == 0 and again.computed == first.computed
    assert len(bc.stored_neuron_output_effect(book, 0, 0).top) == 4
    assert bc.stored_neuron_output_effect(book, 0, 0).top.strs[0].startswith("<")  # no vocab: ids shown as <id>
