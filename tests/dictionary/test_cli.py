"""`circuitbook dictionary` end to end on the superposition model; bad input exits 2 and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from circuitbook.book import Book, BookError
from circuitbook.book import dictionary as bd
from circuitbook.cli import main
from circuitbook.dictionary import Dictionary, DictionaryConfig
from circuitbook.dictionary.formats import load_saelens, save_saelens


def test_train_eval_export_import_and_features_as_units(sp_dir, tmp_path, capsys):
    book = tmp_path / "b.db"
    argv = ["dictionary", "train", str(sp_dir), "--corpus", str(sp_dir / "stories.txt"), "--book", str(book),
            "--kind", "transcoder", "--layer", "0", "--features", "32", "--k", "1", "--tokens", str(256 * 40),
            "--batch-size", "256", "--holdout", "20", "--name", "tc", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "loss recovered vs mean ablation" in out and "feature/0/31" in out
    b = Book.open(book)
    [row] = bd.dictionaries(b)
    assert (row["number"], row["name"], row["d_sae"], row["k"]) == (0, "tc", 32, 1)
    [m] = bd.metrics(b, 0)
    assert m["n_tokens"] > 0 and 0 <= m["dead_fraction"] <= 1 and m["l0"] <= 1.0 + 1e-9
    assert sum(c for _, _, c in bd.density_histogram(b, m["id"])) == round(32 * (1 - m["dead_fraction"]))
    # features are units: labels, notes, sections, index checks
    b.set_label("feature", 0, 5, label="PRON -> VERB?", status="hypothesis")
    u = b.unit("feature", 0, 5)
    assert u.label == "PRON -> VERB?" and u.key == "F0.5" and u["dictionary"]["dictionary"] == "tc"
    assert len(list(b.units("feature"))) == 32
    with pytest.raises(BookError, match="no feature 0.32"):
        b.unit("feature", 0, 32)
    with pytest.raises(BookError, match="no feature 1.0"):
        b.unit("feature", 1, 0)
    # export -> SAELens -> import as a second dictionary -> eval
    assert main(["dictionary", "export", "--book", str(book), "--name", "tc", "--out", str(tmp_path / "x")]) == 0
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "x"))
    assert theirs.cfg.architecture() == "topk" and theirs.cfg.d_sae == 32
    assert main(["dictionary", "import", str(sp_dir), "--book", str(book), "--path", str(tmp_path / "x"),
                 "--name", "copy"]) == 0
    assert [r["name"] for r in bd.dictionaries(b)] == ["tc", "copy"]
    assert main(["dictionary", "eval", str(sp_dir), "--book", str(book), "--name", "copy", "--corpus",
                 str(sp_dir / "stories.txt"), "--holdout", "20", "--no-progress"]) == 0
    [m2] = bd.metrics(b, 1)
    assert m2["fvu"] == pytest.approx(m["fvu"], rel=1e-4) and m2["ce_spliced"] == pytest.approx(m["ce_spliced"], rel=1e-5)


def _bad_dirs(tmp_path):
    g = torch.Generator().manual_seed(0)
    small = Dictionary(DictionaryConfig("transcoder", 0, 64, 16, "relu"))
    save_saelens(small, tmp_path / "narrow")
    ok = Dictionary(DictionaryConfig("transcoder", 0, 256, 16, "relu"))
    save_saelens(ok, tmp_path / "cut")
    raw = (tmp_path / "cut" / "sae_weights.safetensors").read_bytes()
    (tmp_path / "cut" / "sae_weights.safetensors").write_bytes(raw[:100])
    save_saelens(ok, tmp_path / "arch")
    cfg = json.loads((tmp_path / "arch" / "cfg.json").read_text())
    (tmp_path / "arch" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "crosscoder"}))
    return {"narrow": "d_model is 256", "cut": "truncated or corrupt", "arch": "unknown or unsupported architecture"}


def test_bad_dictionaries_exit_2_and_write_nothing(sp_dir, tmp_path, capsys):
    for name, msg in _bad_dirs(tmp_path).items():
        book = tmp_path / f"{name}.db"
        assert main(["dictionary", "import", str(sp_dir), "--book", str(book), "--path", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and err[0].startswith("circuitbook dictionary: error:")
        assert not book.exists()
    book = tmp_path / "t.db"
    assert main(["dictionary", "train", str(sp_dir), "--corpus", str(sp_dir / "stories.txt"), "--book", str(book),
                 "--layer", "3", "--features", "8", "--no-progress"]) == 2
    assert "layer 3" in capsys.readouterr().err and not book.exists()
    assert main(["dictionary", "train", str(sp_dir), "--corpus", str(sp_dir / "stories.txt"), "--book", str(book),
                 "--features", "8", "--k", "9", "--no-progress"]) == 2
    assert "1 <= k <= d_sae" in capsys.readouterr().err and not book.exists()
