"""The bad-input matrix: every command x every input it takes, refused cleanly.

Each case runs the CLI in-process (``circuitbook.cli.main``) on a broken input and asserts: exit code 2,
exactly one line on stderr that names the file (or option) and the problem, no traceback, and nothing
written: the tree of every directory the command could touch is byte-identical before and after (new
books, changed books, leftover -wal / lock files, half-written outputs all count). A few cases also run
as real subprocesses (``python -m circuitbook``). Degenerate but valid models (an all-zero head, dead
neurons, constant embeddings) are not bad input: every command must finish on them (exit 0), never crash,
and store no NaN. docs/bad-input.md lists every case (a test keeps it complete).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuitbook.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


def tree(*roots: Path) -> dict[str, str]:
    """{path: sha256} of every file under the roots (directories as '<dir>')."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(d: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(d / "model.safetensors")
    fn(sd)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Read-only inputs shared by the cases: the demo model and corpus, broken variants of both, books, specs."""
    from circuitbook.book import Book
    from circuitbook.demo import build_demo

    w = tmp_path_factory.mktemp("world")
    m = build_demo(d_mlp=32, n_stories=40).write(w / "model")
    build_demo(seed=1, d_mlp=32, n_stories=10).write(w / "model2")
    st = (m / "model.safetensors").read_bytes()
    _copy_model(m, w / "m-trunc")
    (w / "m-trunc" / "model.safetensors").write_bytes(st[: len(st) // 2])
    _copy_model(m, w / "m-garbage")
    (w / "m-garbage" / "model.safetensors").write_bytes(b"\xff" * 64)
    _copy_model(m, w / "m-hidden")
    _edit_config(w / "m-hidden", hidden_size=128)
    _copy_model(m, w / "m-vocab")
    _edit_config(w / "m-vocab", vocab_size=50)
    _copy_model(m, w / "m-missing")
    _edit_tensors(w / "m-missing", lambda sd: sd.pop("transformer.h.0.mlp.c_fc.bias"))
    _copy_model(m, w / "m-nan")
    _edit_tensors(w / "m-nan", lambda sd: sd["transformer.h.0.mlp.c_fc.weight"].__setitem__((0, 0), float("nan")))
    _copy_model(m, w / "m-badjson")
    (w / "m-badjson" / "config.json").write_text('{"model_type": "gpt_neo",')
    _copy_model(m, w / "m-badtype")
    _edit_config(w / "m-badtype", num_heads="four")
    _copy_model(m, w / "m-bert")
    _edit_config(w / "m-bert", model_type="bert")
    _copy_model(m, w / "m-badtok")
    (w / "m-badtok" / "tokenizer.json").write_text("{not json")
    (w / "m-noweights").mkdir()
    shutil.copy(m / "config.json", w / "m-noweights" / "config.json")

    text = (m / "stories.txt").read_text()
    (w / "random.txt").write_bytes(os.urandom(4096))
    (w / "latin1.txt").write_bytes("Once upon a time there was a caf\xe9.\n\nThe end.\n".encode("latin-1"))
    (w / "utf16.txt").write_bytes("Once upon a time.\n\nThe end.\n".encode("utf-16"))
    (w / "empty.txt").write_bytes(b"")
    (w / "seps.txt").write_text("<|endoftext|>\n\n<|endoftext|>\n")
    (w / "one.txt").write_text(text.split("<|endoftext|>")[0])
    (w / "bad.jsonl").write_text('{"text": "Once upon a time."}\n{"text": \n')
    (w / "notext.jsonl").write_text('{"title": "no text field"}\n')
    (w / "notes.txt").write_text("not a book, not a spec, not JSON\n")
    c = sqlite3.connect(w / "other.sqlite")
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()

    spec = lambda neurons: json.dumps({"name": "s", "neurons": neurons})  # noqa: E731
    (w / "spec_class.yaml").write_text(spec([{"name": "x", "replaces": 0, "input": {"class": "nosuchclass"},
                                              "output": {"promote": ["dog"]}}]))
    (w / "spec_range.yaml").write_text(spec([{"name": "x", "replaces": 999, "input": ["he"],
                                              "output": {"promote": ["dog"]}}]))
    (w / "spec_syntax.yaml").write_text("neurons: [\n  {name: x\n")
    (w / "spec_field.yaml").write_text("name: s\nneuronz: []\n")
    (w / "spec_latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    for tag, name, idx in (("nope", "nope", 0), ("range", "d", 99), ("wide", "w", 1), ("deep", "deep", 1)):
        (w / f"spec_feat_{tag}.yaml").write_text(spec([{"name": "x", "replaces": {"feature": {"dictionary": name,
                                                        "idx": idx}}, "input": ["he"], "output": {"promote": ["dog"]}}]))

    assert main(["circuits", str(m), "--book", str(w / "good.db"), "--no-progress"]) == 0
    book = Book.open(w / "good.db")
    book.set_label("neuron", 0, 1, label="something")
    book.close_all()
    assert main(["circuits", str(m), "--book", str(w / "unlabelled.db"), "--no-progress"]) == 0
    _newer_commands_world(w, m)
    return w


def _newer_commands_world(w: Path, m: Path) -> None:
    """What the explain / score / scorecard / dictionary / saved-graph cases read: the corpus split into the
    stories a book's scan reads (fit.txt) and held-out ones (held.txt); a scanned book without explanations,
    an explained one, a book with a trained dictionary and its SAELens export (plus broken copies of it), a
    book with a saved graph, and graph JSON files that are not circuit-tracer graphs."""
    from circuitbook.corpus import read_stories
    from circuitbook.dictionary import Dictionary, DictionaryConfig
    from circuitbook.dictionary.formats import save_saelens

    stories = list(read_stories(m / "stories.txt"))
    (w / "fit.txt").write_text("\n<|endoftext|>\n".join(stories[:30]) + "\n")
    (w / "held.txt").write_text("\n<|endoftext|>\n".join(stories[30:]) + "\n")
    assert main(["scan", str(m), "--corpus", str(w / "fit.txt"), "--book", str(w / "scanned.db"), "--k", "4",
                 "--no-progress"]) == 0
    shutil.copy(w / "scanned.db", w / "explained.db")
    assert main(["explain", str(w / "explained.db"), "--model", str(m)]) == 0
    assert main(["dictionary", "train", str(m), "--corpus", str(w / "fit.txt"), "--book", str(w / "dict.db"),
                 "--features", "16", "--k", "2", "--tokens", "512", "--batch-size", "128", "--holdout", "5",
                 "--name", "d", "--no-progress"]) == 0
    assert main(["dictionary", "export", "--book", str(w / "dict.db"), "--name", "d", "--out", str(w / "sae")]) == 0
    (w / "sae-nocfg").mkdir()
    shutil.copy(w / "sae" / "sae_weights.safetensors", w / "sae-nocfg")
    shutil.copytree(w / "sae", w / "sae-cfg")  # cfg.json says d_in 2 x d_model, the weights say d_model
    cfg = json.loads((w / "sae-cfg" / "cfg.json").read_text())
    (w / "sae-cfg" / "cfg.json").write_text(json.dumps({**cfg, "d_in": cfg["d_in"] * 2}))
    save_saelens(Dictionary(DictionaryConfig("transcoder", 0, cfg["d_in"] * 2, 16, "relu")), w / "sae-wide")
    _graph_features_world(w)
    shutil.copy(w / "good.db", w / "graphs.db")
    assert main(["graph", str(m), "Once upon a time", "--book", str(w / "graphs.db"), "--save", "g"]) == 0
    (w / "notgraph.json").write_text(json.dumps({"nodes": "none"}))
    (w / "badnodes.json").write_text(json.dumps({"metadata": {"prompt_tokens": ["a"]}, "nodes": ["x"], "links": []}))


def _graph_features_world(w: Path) -> None:
    """Books for `graph --features`: kinds.db (dict.db plus an SAE `s` and a skip-transcoder `k`) and wide.db (an
    unbound book holding a transcoder `w` of d_in 512, twice the demo's d_model, and `deep`, one of layer 3)."""
    from circuitbook.book import Book
    from circuitbook.dictionary import Dictionary, DictionaryConfig
    from circuitbook.dictionary.store import save_to_book

    shutil.copy(w / "dict.db", w / "kinds.db")
    book = Book.open(w / "kinds.db")
    d_model = int(book.config["d_model"])
    save_to_book(book, "s", Dictionary(DictionaryConfig("sae", 0, d_model, 16, "relu")))
    save_to_book(book, "k", Dictionary(DictionaryConfig("skip-transcoder", 0, d_model, 16, "relu")))
    book.close_all()
    book = Book.open(w / "wide.db")
    save_to_book(book, "w", Dictionary(DictionaryConfig("transcoder", 0, 2 * d_model, 16, "relu")))
    save_to_book(book, "deep", Dictionary(DictionaryConfig("transcoder", 3, d_model, 16, "relu")))
    book.close_all()


M, C = "{w}/model", "{w}/model/stories.txt"
E, H, G = "{w}/explained.db", "{w}/held.txt", "{w}/graphs.db"  # an explained book, its held-out stories, saved graphs
SMALL = ["--holdout", "5", "--tokens", "512", "--batch-size", "128", "--no-progress"]  # quick if ever not refused
DT = ["dictionary", "train", M, "--corpus", C, "--book", "{t}/b.db", *SMALL]
DI = ["dictionary", "import", M, "--book", "{t}/b.db", "--path"]
CASES = [
    # scan: model, --corpus, --book, options
    ("scan truncated safetensors", ["scan", "{w}/m-trunc", "--corpus", C, "--book", "{t}/b.db"],
     ["m-trunc/model.safetensors", "truncated"]),
    ("scan garbage safetensors header", ["scan", "{w}/m-garbage", "--corpus", C, "--book", "{t}/b.db"],
     ["m-garbage/model.safetensors", "not a safetensors file"]),
    ("scan hidden_size != weights", ["scan", "{w}/m-hidden", "--corpus", C, "--book", "{t}/b.db"],
     ["m-hidden/model.safetensors", "transformer.wte.weight", "config.json"]),
    ("scan random-bytes corpus", ["scan", M, "--corpus", "{w}/random.txt", "--book", "{t}/b.db"],
     ["random.txt", "not text"]),
    ("scan Latin-1 corpus", ["scan", M, "--corpus", "{w}/latin1.txt", "--book", "{t}/b.db"],
     ["latin1.txt", "not valid utf-8: byte offset 32"]),
    ("scan UTF-16 corpus without --encoding", ["scan", M, "--corpus", "{w}/utf16.txt", "--book", "{t}/b.db"],
     ["utf16.txt", "NUL bytes"]),
    ("scan empty corpus", ["scan", M, "--corpus", "{w}/empty.txt", "--book", "{t}/b.db"], ["empty.txt", "no stories"]),
    ("scan separators-only corpus", ["scan", M, "--corpus", "{w}/seps.txt", "--book", "{t}/b.db"],
     ["seps.txt", "no stories"]),
    ("scan corpus is a directory", ["scan", M, "--corpus", "{w}", "--book", "{t}/b.db"], ["not a file"]),
    ("scan unknown --encoding", ["scan", M, "--corpus", C, "--book", "{t}/b.db", "--encoding", "klingon"],
     ["klingon"]),
    ("scan --book is a directory", ["scan", M, "--corpus", C, "--book", "{t}"], ["is a directory"]),
    ("scan --book is a text file", ["scan", M, "--corpus", C, "--book", "{w}/notes.txt"],
     ["notes.txt", "not a circuitbook book"]),
    ("scan --book is another SQLite db", ["scan", M, "--corpus", C, "--book", "{w}/other.sqlite"],
     ["other.sqlite", "not a circuitbook book"]),
    ("scan --book of another model", ["scan", "{w}/model2", "--corpus", C, "--book", "{w}/good.db"],
     ["good.db", "describes model"]),
    ("scan bad --shard", ["scan", M, "--corpus", C, "--book", "{t}/b.db", "--shard", "3/2"], ["--shard 3/2"]),
    ("scan --k 0", ["scan", M, "--corpus", C, "--book", "{t}/b.db", "--k", "0"], ["k and r must be >= 1"]),
    ("scan --max-len past the context", ["scan", M, "--corpus", C, "--book", "{t}/b.db", "--max-len", "99999"],
     ["max_len 99999"]),
    # circuits
    ("circuits tensor missing", ["circuits", "{w}/m-missing", "--book", "{t}/b.db"],
     ["m-missing/model.safetensors", "transformer.h.0.mlp.c_fc.bias"]),
    ("circuits vocab_size != weights", ["circuits", "{w}/m-vocab", "--book", "{t}/b.db"],
     ["m-vocab/model.safetensors", "vocab 50"]),
    ("circuits NaN weights", ["circuits", "{w}/m-nan", "--book", "{t}/b.db"], ["m-nan", "c_fc.weight", "NaN"]),
    ("circuits config.json not JSON", ["circuits", "{w}/m-badjson", "--book", "{t}/b.db"],
     ["m-badjson/config.json", "not valid JSON"]),
    ("circuits config field of the wrong type", ["circuits", "{w}/m-badtype", "--book", "{t}/b.db"],
     ["m-badtype/config.json", "four"]),
    ("circuits unsupported model_type", ["circuits", "{w}/m-bert", "--book", "{t}/b.db"],
     ["m-bert/config.json", "unsupported model_type 'bert'"]),
    ("circuits no weights file", ["circuits", "{w}/m-noweights", "--book", "{t}/b.db"],
     ["m-noweights", "no model.safetensors"]),
    ("circuits not a model directory", ["circuits", "{w}/nowhere", "--book", "{t}/b.db"], ["not a model directory"]),
    ("circuits --stories 0", ["circuits", M, "--book", "{t}/b.db", "--stories", "0"], ["--stories must be"]),
    ("circuits Latin-1 corpus", ["circuits", M, "--book", "{t}/b.db", "--corpus", "{w}/latin1.txt"],
     ["latin1.txt", "byte offset"]),
    ("circuits --book of another model", ["circuits", "{w}/model2", "--book", "{w}/good.db"],
     ["good.db", "describes model"]),
    ("circuits --book in a missing directory", ["circuits", M, "--book", "{t}/no/dir/b.db"], ["does not exist"]),
    # type
    ("type no corpus for a new book", ["type", M, "--book", "{t}/b.db"], ["no --corpus"]),
    ("type binary corpus", ["type", M, "--book", "{t}/b.db", "--corpus", "{w}/random.txt"], ["random.txt", "not text"]),
    ("type JSONL with a broken line", ["type", M, "--book", "{t}/b.db", "--corpus", "{w}/bad.jsonl"],
     ["bad.jsonl:2", "not valid JSON"]),
    ("type JSONL without a text field", ["type", M, "--book", "{t}/b.db", "--corpus", "{w}/notext.jsonl"],
     ["notext.jsonl:1", "'text'"]),
    ("type --max-stories 0", ["type", M, "--book", "{t}/b.db", "--corpus", C, "--max-stories", "0"],
     ["--max-stories"]),
    ("type --alpha 2", ["type", M, "--book", "{t}/b.db", "--corpus", C, "--alpha", "2"], ["--alpha"]),
    ("type --book of another model", ["type", "{w}/model2", "--book", "{w}/good.db", "--corpus", C],
     ["good.db", "describes model"]),
    ("type corrupt tokenizer.json", ["type", "{w}/m-badtok", "--book", "{t}/b.db", "--corpus", C],
     ["m-badtok", "tokenizer"]),
    # handcraft: spec, --model, --corpus, --book, --classes, --save-model
    ("handcraft spec: unknown class", ["handcraft", "{w}/spec_class.yaml", "--model", M, "--corpus", C,
                                       "--book", "{t}/new.db"], ["nosuchclass"]),
    ("handcraft spec: replaces out of range", ["handcraft", "{w}/spec_range.yaml", "--model", M, "--corpus", C,
                                               "--book", "{t}/new.db"], ["999"]),
    ("handcraft spec: YAML syntax", ["handcraft", "{w}/spec_syntax.yaml", "--model", M, "--corpus", C,
                                     "--book", "{t}/new.db"], ["spec_syntax.yaml", "not valid YAML"]),
    ("handcraft spec: unknown field", ["handcraft", "{w}/spec_field.yaml", "--model", M, "--corpus", C],
     ["spec_field.yaml", "neuronz"]),
    ("handcraft spec: not UTF-8", ["handcraft", "{w}/spec_latin1.yaml", "--model", M, "--corpus", C],
     ["spec_latin1.yaml", "byte offset"]),
    ("handcraft spec: missing", ["handcraft", "{t}/missing.yaml", "--model", M, "--corpus", C], ["does not exist"]),
    ("handcraft one-story corpus", ["handcraft", "{w}/spec_range.yaml", "--model", M, "--corpus", "{w}/one.txt",
                                    "--book", "{t}/new.db"], ["one.txt", "only 1 story"]),
    ("handcraft --fit-fraction 1.5", ["handcraft", "{w}/spec_range.yaml", "--model", M, "--corpus", C,
                                      "--fit-fraction", "1.5"], ["--fit-fraction"]),
    ("handcraft --classes not JSON", ["handcraft", "{w}/spec_class.yaml", "--model", M, "--corpus", C,
                                      "--classes", "{w}/notes.txt"], ["--classes", "notes.txt"]),
    ("handcraft --save-model is a file", ["handcraft", "{w}/spec_class.yaml", "--model", M, "--corpus", C,
                                          "--save-model", "{w}/notes.txt"], ["notes.txt", "is a file"]),
    ("handcraft no --model and no book", ["handcraft", "{w}/spec_class.yaml", "--corpus", C], ["give --model"]),
    ("handcraft --book of another model", ["handcraft", "{w}/spec_class.yaml", "--model", "{w}/model2",
                                           "--corpus", C, "--book", "{w}/good.db"], ["good.db", "describes model"]),
    # handcraft with dictionary features (the dictionaries come from --book)
    ("handcraft spec: features without --book", ["handcraft", "{w}/spec_feat_range.yaml", "--model", M, "--corpus", C],
     ["spec_feat_range.yaml", "names dictionary features (d)", "give --book"]),
    ("handcraft spec: unknown dictionary", ["handcraft", "{w}/spec_feat_nope.yaml", "--model", M, "--corpus", C,
                                            "--book", "{w}/dict.db"], ["dict.db", "no dictionary 'nope'"]),
    ("handcraft spec: feature index out of range", ["handcraft", "{w}/spec_feat_range.yaml", "--model", M, "--corpus",
                                                    C, "--book", "{w}/dict.db"],
     ["spec_feat_range.yaml", "neurons[0].replaces.feature", "feature 99 does not exist", "0..15"]),
    ("handcraft spec: replaces a feature of a dictionary of another width",
     ["handcraft", "{w}/spec_feat_wide.yaml", "--model", M, "--corpus", C, "--book", "{w}/wide.db"],
     ["d_in=512", "d_model is 256"]),
    ("handcraft spec: replaces a feature of a dictionary of another layer",
     ["handcraft", "{w}/spec_feat_deep.yaml", "--model", M, "--corpus", C, "--book", "{w}/wide.db"],
     ["layer 3", "1 layer"]),
    ("handcraft spec: replaces a feature, --save-model", ["handcraft", "{w}/spec_feat_range.yaml", "--model", M,
                                                          "--corpus", C, "--book", "{w}/dict.db", "--save-model",
                                                          "{t}/out"], ["--save-model", "no checkpoint"]),
    # coverage
    ("coverage: no labelled units (book unchanged)", ["coverage", "--book", "{w}/unlabelled.db", "--corpus", C],
     ["unlabelled.db", "no labelled units"]),
    ("coverage: missing book", ["coverage", "--book", "{t}/b.db", "--corpus", C], ["no book"]),
    ("coverage: empty corpus", ["coverage", "--book", "{w}/good.db", "--corpus", "{w}/empty.txt"],
     ["empty.txt", "no stories"]),
    ("coverage: --model of another model", ["coverage", "--book", "{w}/good.db", "--corpus", C,
                                            "--model", "{w}/model2"], ["good.db", "describes model"]),
    ("coverage --features: unknown dictionary", ["coverage", "--book", "{w}/dict.db", "--corpus", C, "--features",
                                                 "nope"], ["dict.db", "no dictionary 'nope'"]),
    ("coverage --features: no labelled features", ["coverage", "--book", "{w}/dict.db", "--corpus", C, "--features",
                                                   "d"], ["dict.db", "no labelled features of dictionary 'd'"]),
    ("coverage --features: d_in != the model's d_model", ["coverage", "--book", "{w}/wide.db", "--corpus", C,
                                                          "--model", M, "--features", "w"], ["d_in=512", "d_model is 256"]),
    ("coverage --features: a dictionary of another layer", ["coverage", "--book", "{w}/wide.db", "--corpus", C,
                                                            "--model", M, "--features", "deep"], ["layer 3", "1 layer"]),
    ("coverage --error without --features", ["coverage", "--book", "{w}/good.db", "--corpus", C, "--error", "drop"],
     ["--error", "needs --features"]),
    ("coverage --features: unknown --error", ["coverage", "--book", "{w}/dict.db", "--corpus", C, "--features", "d",
                                              "--error", "maybe"], ["--error", "maybe"]),
    ("coverage: truncated --model", ["coverage", "--book", "{w}/good.db", "--corpus", C, "--model", "{w}/m-trunc"],
     ["m-trunc/model.safetensors", "truncated"]),
    # find
    ("find: missing book", ["find", "{t}/b.db", "look"], ["no book"]),
    ("find: not a book", ["find", "{w}/notes.txt", "look"], ["notes.txt", "not a circuitbook book"]),
    ("find: empty words", ["find", "{w}/good.db", "  "], ["concept's words"]),
    ("find: binary --corpus", ["find", "{w}/good.db", "look", "--corpus", "{w}/random.txt"], ["random.txt", "not text"]),
    # graph
    ("graph: truncated model", ["graph", "{w}/m-trunc", "Once upon"], ["m-trunc/model.safetensors", "truncated"]),
    ("graph: --json into a missing directory", ["graph", M, "Once upon", "--json", "{t}/no/g.json"], ["g.json"]),
    ("graph: bad --ablate node writes no --json", ["graph", M, "Once upon", "--json", "{t}/g.json",
                                                    "--ablate", "neuron/7/0"], ["neuron/7/0"]),
    ("graph: --book missing", ["graph", M, "Once upon", "--book", "{t}/b.db"], ["b.db", "does not exist"]),
    # serve, export, merge
    ("serve: bad --port", ["serve", "{w}/good.db", "--port", "0"], ["--port"]),
    ("serve: missing book", ["serve", "{t}/b.db"], ["no book"]),
    ("export: not a book", ["export", "{w}/notes.txt", "--html", "{t}/site"], ["notes.txt", "not a circuitbook book"]),
    ("export: --html is a file", ["export", "{w}/good.db", "--html", "{w}/notes.txt"], ["notes.txt"]),
    ("merge: missing shard", ["merge", "{t}/s0.db", "--book", "{t}/m.db"], ["no book"]),
    ("merge: a shard that is not a book", ["merge", "{w}/notes.txt", "--book", "{t}/m.db"],
     ["notes.txt", "not a circuitbook book"]),
    ("demo: --out is a file", ["demo", "--out", "{w}/notes.txt"], ["notes.txt", "is a file"]),
    ("merge: a book without a scan", ["merge", "{w}/good.db", "--book", "{t}/m.db"], ["good.db", "holds no scan"]),
    # explain: the book, --model, --kind
    ("explain: missing book", ["explain", "{t}/b.db"], ["b.db", "no book"]),
    ("explain: not a book", ["explain", "{w}/notes.txt"], ["notes.txt", "not a circuitbook book"]),
    ("explain: another SQLite db", ["explain", "{w}/other.sqlite"], ["other.sqlite", "not a circuitbook book"]),
    ("explain: a book with no scan", ["explain", "{w}/good.db", "--no-model"], ["good.db", "no scan"]),
    ("explain: --model of another model", ["explain", "{w}/scanned.db", "--model", "{w}/model2"],
     ["scanned.db", "describes model"]),
    ("explain: truncated --model", ["explain", "{w}/scanned.db", "--model", "{w}/m-trunc"],
     ["m-trunc/model.safetensors", "truncated"]),
    ("explain: unknown --kind", ["explain", "{w}/scanned.db", "--no-model", "--kind", "nosuchkind"],
     ["--kind", "nosuchkind"]),
    # score: the book, --corpus (held out), options
    ("score: missing book", ["score", "{t}/b.db", "--corpus", H], ["b.db", "no book"]),
    ("score: another SQLite db", ["score", "{w}/other.sqlite", "--corpus", H], ["other.sqlite", "not a circuitbook"]),
    ("score: a book without explanations", ["score", "{w}/scanned.db", "--corpus", H],
     ["scanned.db", "no explanations"]),
    ("score: corpus overlaps the scanned stories", ["score", E, "--corpus", "{w}/fit.txt"],
     ["fit.txt", "read by the book's scan"]),
    ("score: empty corpus", ["score", E, "--corpus", "{w}/empty.txt"], ["empty.txt", "no stories"]),
    ("score: binary corpus", ["score", E, "--corpus", "{w}/random.txt"], ["random.txt", "not text"]),
    ("score: Latin-1 corpus", ["score", E, "--corpus", "{w}/latin1.txt"], ["latin1.txt", "byte offset"]),
    ("score: missing corpus", ["score", E, "--corpus", "{t}/nope.txt"], ["nope.txt", "does not exist"]),
    ("score: --checkpoint-every 0", ["score", E, "--corpus", H, "--checkpoint-every", "0"], ["--checkpoint-every 0"]),
    ("score: --stories 0", ["score", E, "--corpus", H, "--stories", "0"], ["--stories 0"]),
    ("score: --stories -3", ["score", E, "--corpus", H, "--stories", "-3"], ["--stories -3"]),
    ("score: --window 0", ["score", E, "--corpus", H, "--window", "0"], ["--window 0"]),
    ("score: --batch-size 0", ["score", E, "--corpus", H, "--batch-size", "0"], ["--batch-size 0"]),
    ("score: --max-len 1", ["score", E, "--corpus", H, "--max-len", "1"], ["--max-len 1"]),
    ("score: --ablation-tokens 0", ["score", E, "--corpus", H, "--ablation-tokens", "0"], ["--ablation-tokens 0"]),
    ("score: unknown --kind", ["score", E, "--corpus", H, "--kind", "nosuchkind"], ["--kind", "nosuchkind"]),
    ("score: --model of another model", ["score", E, "--corpus", H, "--model", "{w}/model2"],
     ["explained.db", "describes model"]),
    ("score: --shards 0", ["score", E, "--corpus", H, "--shards", "0"], ["--shards 0"]),
    # scorecard
    ("scorecard: missing book", ["scorecard", "{t}/b.db", "--corpus", H], ["b.db", "no book"]),
    ("scorecard: a book without explanations", ["scorecard", "{w}/scanned.db", "--corpus", H],
     ["scanned.db", "no explanations"]),
    ("scorecard: corpus overlaps the scanned stories", ["scorecard", E, "--corpus", "{w}/fit.txt"],
     ["fit.txt", "read by the book's scan"]),
    ("scorecard: empty corpus", ["scorecard", E, "--corpus", "{w}/empty.txt"], ["empty.txt", "no stories"]),
    ("scorecard: --curve-points 0", ["scorecard", E, "--corpus", H, "--curve-points", "0"], ["--curve-points 0"]),
    ("scorecard: --stories -1", ["scorecard", E, "--corpus", H, "--stories", "-1"], ["--stories -1"]),
    # dictionary train: model, --corpus, --book, shape and training options
    ("dictionary train: --layer out of range", [*DT, "--layer", "5"], ["layer 5", "1 layer"]),
    ("dictionary train: --features 0", [*DT, "--features", "0"], ["--features 0"]),
    ("dictionary train: --k larger than --features", [*DT, "--features", "16", "--k", "17"],
     ["--k 17", "1 <= k <= d_sae (--features 16)"]),
    ("dictionary train: --k larger than the default width", [*DT, "--k", "9999"], ["k=9999", "d_sae (256)"]),
    ("dictionary train: --k 0", [*DT, "--k", "0"], ["--k 0"]),
    ("dictionary train: unknown --kind", [*DT, "--kind", "crosscoder"], ["--kind", "crosscoder"]),
    ("dictionary train: missing corpus", ["dictionary", "train", M, "--corpus", "{t}/nope.txt", "--book", "{t}/b.db", *SMALL],
     ["nope.txt", "does not exist"]),
    ("dictionary train: empty corpus", ["dictionary", "train", M, "--corpus", "{w}/empty.txt", "--book", "{t}/b.db", *SMALL],
     ["empty.txt", "no stories"]),
    ("dictionary train: --holdout past the corpus", [*DT, "--holdout", "40"], ["--holdout 40", "40 stories"]),
    ("dictionary train: --checkpoint-every 0", [*DT, "--checkpoint-every", "0"], ["checkpoint_every", "not 0"]),
    ("dictionary train: --tokens below one batch", [*DT, "--tokens", "100"], ["tokens (100)", "one batch (128)"]),
    ("dictionary train: --book is another SQLite db", ["dictionary", "train", M, "--corpus", C, "--book",
                                                       "{w}/other.sqlite", *SMALL],
     ["other.sqlite", "not a circuitbook book"]),
    ("dictionary train: --book of another model", ["dictionary", "train", "{w}/model2", "--corpus", C, "--book",
                                                   "{w}/dict.db", *SMALL], ["dict.db", "describes model"]),
    # dictionary eval / export / import
    ("dictionary eval: unknown --name", ["dictionary", "eval", M, "--book", "{w}/dict.db", "--name", "nope",
                                         "--corpus", C, "--holdout", "5"], ["nope"]),
    ("dictionary eval: missing book", ["dictionary", "eval", M, "--book", "{t}/b.db", "--name", "d", "--corpus", C],
     ["b.db", "no book"]),
    ("dictionary eval: empty corpus", ["dictionary", "eval", M, "--book", "{w}/dict.db", "--name", "d",
                                       "--corpus", "{w}/empty.txt"], ["empty.txt", "no stories"]),
    ("dictionary export: unknown --name", ["dictionary", "export", "--book", "{w}/dict.db", "--name", "nope",
                                           "--out", "{t}/x"], ["nope"]),
    ("dictionary export: --out is an existing file", ["dictionary", "export", "--book", "{w}/dict.db", "--name", "d",
                                                      "--out", "{w}/notes.txt"], ["notes.txt", "is a file"]),
    ("dictionary export: missing book", ["dictionary", "export", "--book", "{t}/b.db", "--name", "d", "--out",
                                         "{t}/x"], ["b.db", "no book"]),
    ("dictionary import: nonexistent --path", [*DI, "{t}/nope"], ["nope", "does not exist"]),
    ("dictionary import: directory without cfg.json", [*DI, "{w}/sae-nocfg"], ["sae-nocfg", "cfg.json"]),
    ("dictionary import: d_in != the model's d_model", [*DI, "{w}/sae-wide"], ["d_in=512", "d_model is 256"]),
    ("dictionary import: cfg.json d_in != its weights", [*DI, "{w}/sae-cfg"],
     ["sae-cfg/sae_weights.safetensors", "W_enc has shape"]),
    ("dictionary import: a SAELens directory as --format circuit-tracer", [*DI, "{w}/sae", "--format",
                                                                           "circuit-tracer", "--layer", "0"],
     ["{w}/sae", "is a directory, not a .safetensors file"]),
    ("dictionary import: a SAELens directory as --format sparsify", [*DI, "{w}/sae", "--format", "sparsify",
                                                                     "--layer", "0"], ["sae/sae.safetensors", "does not exist"]),
    ("dictionary import: --format sparsify without --layer", [*DI, "{w}/sae", "--format", "sparsify"],
     ["--layer"]),
    ("dictionary import: unknown --format", [*DI, "{w}/sae", "--format", "hdf5"], ["--format", "hdf5"]),
    ("dictionary import: --layer out of range", [*DI, "{w}/sae", "--layer", "7"], ["layer 7"]),
    ("dictionary import: --book is another SQLite db", ["dictionary", "import", M, "--book", "{w}/other.sqlite",
                                                        "--path", "{w}/sae"], ["other.sqlite", "not a circuitbook"]),
    # graph --features: a transcoder of the book in place of the MLP
    ("graph --features without --book", ["graph", M, "Once upon", "--features", "d"], ["--features needs --book"]),
    ("graph --features: unknown dictionary", ["graph", M, "Once upon", "--book", "{w}/dict.db", "--features", "nope"],
     ["dict.db", "no dictionary 'nope'"]),
    ("graph --features: d_in != the model's d_model", ["graph", M, "Once upon", "--book", "{w}/wide.db", "--features",
                                                       "w"], ["d_in=512", "d_model is 256"]),
    ("graph --features: an SAE", ["graph", M, "Once upon", "--book", "{w}/kinds.db", "--features", "s"],
     ["'s'", "is an SAE"]),
    ("graph --features: a skip-transcoder", ["graph", M, "Once upon", "--book", "{w}/kinds.db", "--features", "k"],
     ["'k'", "skip-transcoder"]),
    ("graph --features: one layer twice", ["graph", M, "Once upon", "--book", "{w}/dict.db", "--features", "d",
                                           "--features", "0"], ["two transcoders replace layer 0"]),
    # graph --save and graphs
    ("graph --save without --book", ["graph", M, "Once upon", "--save", "h"], ["--save needs --book"]),
    ("graph --save: the name is taken", ["graph", M, "Once upon", "--book", G, "--save", "g"],
     ["'g'", "already saved"]),
    ("graph --save: --book of another model", ["graph", "{w}/model2", "Once upon", "--book", G, "--save", "h"],
     ["graphs.db", "describes model"]),
    ("graph --save: --book is another SQLite db", ["graph", M, "Once upon", "--book", "{w}/other.sqlite",
                                                   "--save", "h"], ["other.sqlite", "not a circuitbook book"]),
    ("graph --save: --token not in the vocabulary", ["graph", M, "Once upon", "--book", G, "--save", "h",
                                                     "--token", "qqqq zzzz"], ["qqqq zzzz"]),
    ("graph --save: empty prompt", ["graph", M, "", "--book", G, "--save", "h"], ["prompt"]),
    ("graphs: missing book", ["graphs", "{t}/b.db", "list"], ["b.db", "does not exist"]),
    ("graphs: not a book", ["graphs", "{w}/notes.txt", "list"], ["notes.txt", "not a circuitbook book"]),
    ("graphs show: unknown name", ["graphs", G, "show", "nope"], ["nope"]),
    ("graphs show: --svg into a missing directory", ["graphs", G, "show", "g", "--svg", "{t}/no/g.svg"], ["g.svg"]),
    ("graphs show: --json is a directory", ["graphs", G, "show", "g", "--json", "{t}"], ["is a directory"]),
    ("graphs export: unknown name", ["graphs", G, "export", "nope", "{t}/g.json"], ["nope"]),
    ("graphs export: OUT in a missing directory", ["graphs", G, "export", "g", "{t}/no/g.json"], ["g.json"]),
    ("graphs recompute: unknown name", ["graphs", G, "recompute", "nope", "--model", M], ["nope"]),
    ("graphs recompute: truncated --model", ["graphs", G, "recompute", "g", "--model", "{w}/m-trunc"],
     ["m-trunc/model.safetensors", "truncated"]),
    ("graphs group: neither --auto nor --add", ["graphs", G, "group", "g"], ["give --auto or --add"]),
    ("graphs group: unknown name", ["graphs", G, "group", "nope", "--auto"], ["nope"]),
    ("graphs group: a node not in the graph", ["graphs", G, "group", "g", "--add", "S", "neuron/9/9/9"],
     ["neuron/9/9/9"]),
    ("graphs hypothesis: unknown --how", ["graphs", G, "hypothesis", "g", "it matters", "--supernode", "S",
                                          "--how", "explode", "--threshold", "1"], ["explode"]),
    ("graphs hypothesis: unknown supernode", ["graphs", G, "hypothesis", "g", "it matters", "--supernode", "S",
                                              "--threshold", "1"], ["'S'"]),
    ("graphs hypothesis: --threshold 0", ["graphs", G, "hypothesis", "g", "it matters", "--supernode", "S",
                                          "--threshold", "0"], ["threshold", "> 0"]),
    ("graphs test: unknown --hypothesis", ["graphs", G, "test", "g", "--hypothesis", "99", "--model", M], ["99"]),
    ("graphs import: file not JSON", ["graphs", G, "import", "{w}/notes.txt", "h"], ["notes.txt"]),
    ("graphs import: JSON that is not a graph", ["graphs", G, "import", "{w}/notgraph.json", "h"], ["notgraph.json"]),
    ("graphs import: JSON with malformed nodes", ["graphs", G, "import", "{w}/badnodes.json", "h"],
     ["badnodes.json", "malformed"]),
    ("graphs import: missing file", ["graphs", G, "import", "{t}/nope.json", "h"], ["nope.json"]),
]


def _argv(argv, w, t):
    return [a.format(w=w, t=t) for a in argv]


def _check_one_line(err: str, must: list[str], w: Path, t: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in err and lines[0].startswith("circuitbook ") and ": error: " in lines[0], lines
    for m in must:
        assert m.format(w=w, t=t) in lines[0], (m, lines[0])


@pytest.mark.parametrize("name, argv, must", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_writes_nothing(name, argv, must, world, tmp_path, capsys):
    before = tree(world, tmp_path)
    capsys.readouterr()
    assert main(_argv(argv, world, tmp_path)) == 2
    _check_one_line(capsys.readouterr().err, must, world, tmp_path)
    assert tree(world, tmp_path) == before


def test_the_matrix_is_big_enough():
    assert len(CASES) >= 40 and len({c[1][0] for c in CASES}) >= 10
    assert len({c[0] for c in CASES}) == len(CASES)  # ids are unique (the doc's rows are keyed by them)
    newer = {"explain", "score", "scorecard", "dictionary", "graphs"}
    assert {c[1][0] for c in CASES} >= newer | {"graph"}
    assert {c[1][1] for c in CASES if c[1][0] == "dictionary"} == {"train", "eval", "export", "import"}
    assert sum(c[1][0] in newer or "--save" in c[1] for c in CASES) >= 24


DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"


def test_every_case_is_in_the_doc():
    """docs/bad-input.md lists every case (a row starting with its id): a new case needs its row there."""
    rows = {line.split("|")[1].strip() for line in DOC.read_text().splitlines() if line.startswith("| ")}
    missing = [c[0] for c in CASES if c[0] not in rows]
    assert not missing, f"add rows for these cases to {DOC}: {missing}"


@pytest.mark.parametrize("name", ["scan truncated safetensors", "scan Latin-1 corpus",
                                  "handcraft spec: unknown class", "coverage: no labelled units (book unchanged)",
                                  "score: corpus overlaps the scanned stories", "dictionary train: unknown --kind"])
def test_as_a_subprocess(name, world, tmp_path):
    _, argv, must = next(c for c in CASES if c[0] == name)
    before = tree(world, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    p = subprocess.run([sys.executable, "-m", "circuitbook.cli", *_argv(argv, world, tmp_path)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    _check_one_line(p.stderr, must, world, tmp_path)
    assert tree(world, tmp_path) == before


def test_encoding_option_reads_latin1(world, tmp_path, capsys):
    """The Latin-1 corpus is refused as UTF-8 above, and read with --encoding latin-1."""
    b = tmp_path / "b.db"
    assert main(["circuits", str(world / "model"), "--book", str(b), "--corpus", str(world / "latin1.txt"),
                 "--encoding", "latin-1", "--no-progress"]) == 0
    assert b.exists() and not Path(f"{b}.lock").exists()


# ---------------------------------------------------------------------------------------- degenerate models
def _degenerate(kind: str, demo_dir: Path, out: Path) -> Path:
    """A 2-layer GPT-Neo on the demo tokenizer with one degenerate part (valid weights, odd model)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from circuitbook.model import from_hf_model, save_hf

    torch.manual_seed(0)
    vocab = json.loads((demo_dir / "config.json").read_text())["vocab_size"]
    hf = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                                        attention_types=[[["global", "local"], 1]], window_size=8,
                                        intermediate_size=64, max_position_embeddings=128, bos_token_id=0,
                                        eos_token_id=0)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
        blocks = hf.transformer.h
        if kind == "zero head":  # head 1 of layer 0 and every head of layer 1 write and read nothing
            for layer, heads in ((0, [1]), (1, [0, 1, 2, 3])):
                a = blocks[layer].attn.attention
                for h in heads:
                    sl = slice(8 * h, 8 * h + 8)
                    for proj in (a.q_proj, a.k_proj, a.v_proj):
                        proj.weight[sl] = 0
                    a.out_proj.weight[:, sl] = 0
        elif kind == "dead neurons":  # no MLP neuron ever fires
            for b in blocks:
                b.mlp.c_fc.weight.zero_()
                b.mlp.c_fc.bias.fill_(-50.0)
        elif kind == "constant embeddings":  # every token embeds to the same vector
            hf.transformer.wte.weight[:] = hf.transformer.wte.weight[0].clone()
    return save_hf(from_hf_model(hf), out, tokenizer_from=demo_dir)


DEGENERATE = ["zero head", "dead neurons", "constant embeddings"]


def _floats(v):
    """Every float in a column value: the value itself, or those of the JSON it holds (json reads NaN too)."""
    if isinstance(v, float):
        yield v
    elif isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return
        stack = [v]
        while stack:
            x = stack.pop()
            if isinstance(x, float):
                yield x
            elif isinstance(x, dict):
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)


def _rows_and_non_finite(book: str, table: str) -> tuple[int, list]:
    """(rows in ``table``, every non-finite float in them as (column, value)), REAL and JSON columns alike."""
    c = sqlite3.connect(f"file:{book}?mode=ro", uri=True)
    try:
        cur = c.execute(f"SELECT * FROM {table}")
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        c.close()
    return len(rows), [(col, x) for r in rows for col, v in zip(cols, r) for x in _floats(v) if not math.isfinite(x)]


@pytest.fixture
def one_torch_thread():
    """These models are tiny and score runs one small forward per unit: on a busy 2-core machine two intra-op
    threads waiting for each other cost more than the work (a run took 5 s to 40 s); one thread is steady."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind", DEGENERATE)
def test_degenerate_models_run_every_command(kind, world, tmp_path, capsys, one_torch_thread):
    """Not bad input: a pruned head, dead neurons, constant embeddings are models people do analyse. Every
    command finishes (exit 0) and writes its book; the all-zero head's 0/0 composition score is 0; explain,
    score (on held-out stories), scorecard and dictionary train store no NaN (0/0 correlations, recovered
    fractions of a zero loss gap, FVU of a constant activation...)."""
    from circuitbook.book import Book
    from circuitbook.book import circuits as bc

    m = _degenerate(kind, world / "model", tmp_path / "m")
    corpus, book = str(world / "model" / "stories.txt"), str(tmp_path / "b.db")
    fit, held = str(world / "fit.txt"), str(world / "held.txt")  # the scan reads fit.txt only: held.txt is held out
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "s", "neurons": [{"name": "n", "replaces": 3, "input": ["he", "she"],
                                                          "output": {"promote": ["dog"]}}]}))
    for argv in (["scan", str(m), "--corpus", fit, "--book", book, "--no-progress", "--max-tokens", "400"],
                 ["circuits", str(m), "--book", book, "--corpus", corpus, "--no-progress", "--stories", "4"],
                 ["type", str(m), "--book", book, "--corpus", corpus, "--min-count", "2", "--max-stories", "10"],
                 ["graph", str(m), "Once upon a time"],
                 ["explain", book, "--model", str(m)],
                 ["score", book, "--corpus", held, "--model", str(m), "--stories", "4", "--max-len", "64",
                  "--ablation-tokens", "32"],  # one ablation forward per unit: keep them small
                 ["scorecard", book, "--corpus", held, "--model", str(m), "--curve-points", "3"],
                 ["dictionary", "train", str(m), "--corpus", corpus, "--book", book, "--features", "16", "--k", "2",
                  "--tokens", "512", "--batch-size", "128", "--holdout", "5", "--no-progress"],
                 ["handcraft", str(spec), "--corpus", corpus, "--book", book, "--stories", "6"]):
        rc = main(argv)
        err = capsys.readouterr().err
        if argv[0] == "handcraft" and rc == 2:  # a spec the model cannot express is refused cleanly
            assert kind == "constant embeddings" and "cannot move those logits" in err.strip().splitlines()[-1]
            continue
        assert rc == 0 and "Traceback" not in err, (argv[0], err[-2000:])
    b = Book.open(book, create=False, readonly=True)
    v = bc.stored_composition(b, "V")
    assert v is not None and bool(torch.isfinite(torch.as_tensor(v)).all())
    if kind == "zero head":
        assert float(abs(torch.as_tensor(v)[0, 1]).max()) == 0.0 and float(abs(torch.as_tensor(v)[:, :, 1]).max()) == 0.0
    b.close_all()
    for table in ("explanation_scores", "scorecards", "dictionary_metrics"):
        n, bad = _rows_and_non_finite(book, table)
        assert n >= 1 and not bad, (kind, table, n, bad)
