"""Bad input: one clear line naming the problem, exit code 2, and nothing written."""

from __future__ import annotations

import pytest

from circuitbook.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from circuitbook.demo import build_demo

    return build_demo().write(tmp_path_factory.mktemp("demo"))


@pytest.mark.parametrize("argv, msg", [
    (["scan", "/no/model", "--corpus", "x.txt", "--book", "{tmp}/b.db"], "not a model directory"),
    (["scan", "{demo}", "--corpus", "{tmp}/missing.txt", "--book", "{tmp}/b.db"], "does not exist"),
    (["circuits", "{demo}", "--book", "{tmp}/no/such/dir/b.db"], "does not exist"),
    (["find", "{tmp}/b.db", "look"], "no book"),
    (["coverage", "--book", "{tmp}/b.db", "--corpus", "x.txt"], "no book"),
    (["handcraft", "{tmp}/missing.yaml", "--model", "{demo}", "--corpus", "{demo}/stories.txt"], "does not exist"),
    (["serve", "{tmp}/b.db"], "no book"),
    (["export", "{tmp}/b.db", "--html", "{tmp}/site"], "no book"),
])
def test_bad_input_exits_2_and_writes_nothing(argv, msg, tmp_path, demo_dir, capsys):
    argv = [a.format(tmp=tmp_path, demo=demo_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "b.db").exists()
