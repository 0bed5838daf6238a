"""circuitbook circuits: stores results; bad input is one clear error with exit code 2."""

from circuitbook.book import Book
from circuitbook.book import circuits as bc
from circuitbook.cli import main


def test_cli_runs_and_stores(demo, tmp_path, capsys):
    d = demo.write(tmp_path / "demo")
    db = tmp_path / "b.db"
    rc = main(["circuits", str(d), "--book", str(db), "--corpus", str(d / "stories.txt"), "--stories", "5",
               "--k", "3", "--k-rows", "2", "--pairs", "10", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "previous-token heads" in out and "direct path" in out
    book = Book.open(db)
    assert bc.summary(book, "direct_path_loss")["n_tokens"] > 0
    assert len(bc.stored_neuron_output_effect(book, 0, 3).top) == 3
    ch = demo.truth["copy_head"]
    assert bc.head_scores(book)[(0, ch)]["ov_copying"] > 0.99


def test_cli_bad_input(ts656k_dir, tmp_path, capsys):
    db = str(tmp_path / "b.db")
    for argv, msg in ((["--k", "0"], "--k must be"), (["--corpus", str(tmp_path / "nope.txt")], "does not exist")):
        assert main(["circuits", str(ts656k_dir), "--book", db, *argv]) == 2
        assert msg in capsys.readouterr().err
    assert main(["circuits", str(tmp_path / "no-model"), "--book", db]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_verbose_prints_and_stores_the_kernel_choices(demo, tmp_path, capsys):
    d = demo.write(tmp_path / "demo")
    db = tmp_path / "b.db"
    assert main(["circuits", str(d), "--book", str(db), "--k", "3", "--k-rows", "2", "--pairs", "10",
                 "--no-progress", "-v"]) == 0
    out = capsys.readouterr().out
    assert "screening matmul:" in out and "cpu:" in out and "seconds per task:" in out and "head" in out
    run = Book.open(db).runs("circuits")[-1]
    import json

    tuned = json.loads(run["settings"])["tuning"]
    assert tuned["screen"]["dtype"] in ("fp32", "bf16") and tuned["cpu"]
    assert json.loads(run["summary"])["task_seconds"]["head"] >= 0
