"""The commands end to end on a demo checkpoint (explain, score, scorecard, handcraft --from-book) and the
scorecard page."""

from __future__ import annotations

import pytest

from circuitbook.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, planted0):
    d = tmp_path_factory.mktemp("cli")
    planted0["demo"].write(d / "model")
    (d / "fit.txt").write_text("\n<|endoftext|>\n".join(planted0["fit"]) + "\n")
    (d / "held.txt").write_text("\n<|endoftext|>\n".join(planted0["held"]) + "\n")
    return d


def test_commands_end_to_end(demo_dir, capsys):
    from circuitbook.book import Book
    from circuitbook.book import explanations as be

    d = demo_dir
    m, book = str(d / "model"), str(d / "b.db")
    assert main(["scan", m, "--corpus", str(d / "fit.txt"), "--book", book, "--k", "8", "--no-progress"]) == 0
    assert main(["explain", book, "--model", m]) == 0
    assert "explained" in capsys.readouterr().out
    # the scan's own stories are refused as "held-out"
    assert main(["score", book, "--corpus", str(d / "fit.txt"), "--model", m]) == 2
    assert "read by the book's scan" in capsys.readouterr().err
    assert main(["score", book, "--corpus", str(d / "held.txt"), "--model", m, "--ablation-tokens", "128"]) == 0
    assert "simulation: median" in capsys.readouterr().out
    assert main(["scorecard", book, "--corpus", str(d / "held.txt"), "--model", m, "--curve-points", "3"]) == 0
    assert "scorecard:" in capsys.readouterr().out
    b = Book.open(book)
    assert len(be.scorecards(b)) == 1 and be.count(b) > 0
    assert main(["handcraft", "--from-book", "--book", book, "--model", m, "--corpus", str(d / "held.txt"),
                 "--stories", "40"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert main(["handcraft", "--from-book", "--model", m, "--corpus", str(d / "held.txt")]) == 2
    assert main(["explain", str(d / "missing.db")]) == 2


def test_scorecard_page(planted0):
    from fastapi.testclient import TestClient

    from circuitbook.book import explanations as be
    from circuitbook.web.app import create_app

    book = planted0["book"]
    be.save_scorecard(book, {"ce_original": 2.0, "ce_ablated": 3.0, "ce_explained": 2.1, "recovered": 0.9,
                             "n_explained": 3, "n_units": 64, "groups": [{"by": "author", "group": "<auto>",
                                                                          "n_units": 3, "recovered": 0.9}],
                             "curve": [{"n": 1, "recovered": 0.5}, {"n": 3, "recovered": 0.9}]}, "c", {})
    eid = be.current(book)[("neuron", 0, planted0["demo"].truth["search"])]["id"]
    be.save_scores(book, None, [{"explanation_id": eid, "simulation": 0.2, "carry": 5.0}])
    html = TestClient(create_app(book), base_url="http://127.0.0.1").get("/scorecard").text
    assert "0.900</b> of the loss" in html and "&lt;auto&gt;" in html and "<svg" in html
    queue = html[html.index("id='queue'"):]
    first = queue[queue.index("<tr><td>"):queue.index("</tr>", queue.index("<tr><td>"))]
    assert f">N0.{planted0['demo'].truth['search']}<" in first  # the only unit carrying loss comes first
