import json

from circuitbook.book import Book
from circuitbook.book import handcraft as hb
from circuitbook.cli import main


def test_handcraft_and_coverage_cli(demo, tmp_path, capsys):
    d = demo.write(tmp_path / "demo")
    truth = demo.truth
    (tmp_path / "classes.json").write_text(json.dumps(truth["classes"]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
name: planted
neurons:
  - name: pron->verb
    replaces: {truth['pronoun_verb']}
    input: {{class: PRON}}
    output: {{promote: {{ids: {truth['rules']['pronoun_verb']['writes']}}}}}
    strength: 4
    bias: -2
    gain: 2
""")
    book = tmp_path / "b.db"
    rc = main(["handcraft", str(spec), "--model", str(d), "--corpus", str(d / "stories.txt"), "--book", str(book),
               "--classes", str(tmp_path / "classes.json"), "--stories", "80", "--batch-size", "16",
               "--save-model", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "loss recovered" in out and "stored as evaluation 1" in out
    b = Book.open(book)
    (row,) = hb.evaluations(b)
    assert row["name"] == "planted" and row["recovered_mean"] > 0.5
    full = hb.evaluation(b, row["id"])
    assert "pron->verb" in full["spec"] and full["units"][0]["idx"] == truth["pronoun_verb"]
    assert b.neuron(0, truth["pronoun_verb"]).sections["handcraft"]["specs"][0]["name"] == "planted"
    assert (tmp_path / "out" / "model.safetensors").exists()
    # coverage reads the model from the book
    b.set_label("neuron", 0, truth["pronoun_verb"], label="PRON -> VERB")
    rc = main(["coverage", "--book", str(book), "--corpus", str(d / "stories.txt"), "--stories", "20",
               "--batch-size", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "coverage (mean-ablation" in out and len(hb.coverage_runs(b)) == 1


def test_cli_bad_spec_exits_2(tmp_path, capsys, demo):
    d = demo.write(tmp_path / "demo")
    spec = tmp_path / "bad.yaml"
    spec.write_text("neurons:\n  - input: {class: NOPE}\n    output: [ran]\n")
    rc = main(["handcraft", str(spec), "--model", str(d), "--corpus", str(d / "stories.txt"), "--stories", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.yaml:2: neurons[0].input" in err and "unknown class 'NOPE'" in err


def test_feature_handcraft_and_coverage_cli(tmp_path, capsys):
    """The superposition demo with its exact transcoder in the book: `handcraft` replaces a rule feature,
    `coverage --features` keeps the labelled ones; the error-term setting is printed and stored."""
    from circuitbook.demo.superposition import build_superposition
    from circuitbook.dictionary.store import save_to_book

    from ..dictionary.conftest import exact_transcoder

    demo = build_superposition(0, n_stories=60)
    d = demo.write(tmp_path / "sp")
    from circuitbook.model import load_model

    model = load_model(d)
    book = tmp_path / "b.db"
    b = Book.open(book)
    b.bind_model(model)
    save_to_book(b, "exact", exact_transcoder(demo), model=model)
    names = list(demo.truth["rules"])
    for i in range(4):
        b.set_label("feature", 0, i, label=names[i])
    b.close_all()
    rule = demo.truth["rules"][names[0]]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "by hand", "neurons": [{
        "name": names[0], "replaces": {"feature": {"dictionary": "exact", "idx": 0}}, "input": {"ids": rule["reads"]},
        "output": {"direction": {"values": rule["w"]}}}]}))
    corpus = str(d / "stories.txt")
    assert main(["handcraft", str(spec), "--corpus", corpus, "--book", str(book), "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "error term kept (dictionary_error: keep)" in out and "reference: dictionary 'exact'" in out
    assert main(["coverage", "--book", str(book), "--corpus", corpus, "--features", "exact", "--error", "drop",
                 "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "feature coverage of dictionary 'exact'" in out and "error term dropped" in out and "4/8" in out
    b = Book.open(book)
    (ev,) = hb.evaluations(b)
    full = hb.evaluation(b, ev["id"])
    assert full["units"][0]["kind"] == "feature" and full["result"]["settings"]["dictionary_error"] == "keep"
    assert ev["recovered_mean"] > 0.9
    run = hb.latest_coverage(b)
    assert run["n_units"] == 4 and run["result"]["error"] == "drop" and run["result"]["dictionary"] == "exact"
    assert 0.15 < run["recovered"] < 0.85
