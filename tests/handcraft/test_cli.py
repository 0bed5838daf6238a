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
