import torch

from circuitbook.book import Book
from circuitbook.handcraft import coverage, coverage_from_book, export_spec, mean_loss, unit_means


def test_coverage_against_interventions(demo, demo_fit, tmp_path):
    m, truth = demo.model, demo.truth
    book = Book.open(tmp_path / "b.db")
    book.bind_model(m)
    book.set_label("neuron", 0, truth["pronoun_verb"], label="PRON -> VERB")
    book.set_label("neuron", 0, truth["article_noun"], label="DET -> NOUN")
    book.set_label("head", 0, truth["copy_head"], label="name copier")
    cov = coverage_from_book(book, m, demo_fit)
    means = unit_means(m.weights, demo_fit())
    keep_n = [truth["pronoun_verb"], truth["article_noun"]]

    def neurons(x):
        y = means.neuron[0].expand_as(x).clone()
        y[..., keep_n] = x[..., keep_n]
        return y

    def heads(x):
        y = means.head[0].expand_as(x).clone()
        y[:, :, truth["copy_head"]] = x[:, :, truth["copy_head"]]
        return y

    iv = {"blocks.0.mlp.hook_post": neurons, "blocks.0.attn.hook_result": heads}
    kept = mean_loss(m.weights, demo_fit(), iv)[0]
    none = mean_loss(m.weights, demo_fit(), {"blocks.0.mlp.hook_post": lambda x: means.neuron[0].expand_as(x),
                                             "blocks.0.attn.hook_result": lambda x: means.head[0].expand_as(x)})[0]
    orig = mean_loss(m.weights, demo_fit())[0]
    assert abs(cov.ce_kept - kept) < 1e-4 and abs(cov.ce_ablated - none) < 1e-4 and abs(cov.ce_original - orig) < 1e-6
    assert abs(cov.recovered - (none - kept) / (none - orig)) < 1e-3
    assert cov.recovered > 0.5  # the planted mechanisms carry most of the model
    groups = {g.group: g for g in cov.groups}
    assert {"all labelled", "neurons", "heads", "pron -> verb", "det -> noun", "name copier"} <= set(groups)
    assert groups["neurons"].n_units == 2 and groups["heads"].n_units == 1
    # stored and read back
    from circuitbook.book import handcraft as hb

    cid = hb.save_coverage(book, cov.to_dict(), m.fingerprint(), "demo")
    assert hb.latest_coverage(book)["id"] == cid and abs(hb.coverage_runs(book)[0]["recovered"] - cov.recovered) < 1e-12
    # a spec exported from the labels: class rules where the label names known classes
    spec = export_spec(book, truth["classes"])
    by = {n.replaces: n for n in spec.neurons}
    assert by[truth["pronoun_verb"]].input.cls == "PRON" and by[truth["pronoun_verb"]].output.promote.cls == "VERB"


def test_keeping_everything_recovers_everything(demo, demo_fit):
    m = demo.model
    units = [("neuron", 0, i, "x") for i in range(m.cfg.d_mlp)] + [("head", 0, h, "y") for h in range(m.cfg.n_heads)]
    cov = coverage(m, units, demo_fit, per_label=False)
    assert abs(cov.recovered - 1.0) < 1e-4
