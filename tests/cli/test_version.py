"""``circuitbook --version``: one line ``circuitbook <version>``, exit 0, through the real entry points."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import circuitbook

SRC = Path(circuitbook.__file__).resolve().parents[1]  # the checkout under test (src/)
ROOT = SRC.parent


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def test_package_version_agrees_with_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert circuitbook.__version__ == pyproject["project"]["version"]


@pytest.mark.parametrize("entry", ["module", "console script"])
def test_version_flag(entry):
    if entry == "module":
        cmd = [sys.executable, "-m", "circuitbook.cli", "--version"]
    else:
        exe = shutil.which("circuitbook")
        if exe is None:
            pytest.skip("the circuitbook console script is not installed")
        cmd = [exe, "--version"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    try:
        expected = importlib.metadata.version("circuitbook")
    except importlib.metadata.PackageNotFoundError:
        expected = circuitbook.__version__
    assert r.stdout.strip() == f"circuitbook {expected}"
    assert r.stdout.count("\n") == 1 and not r.stderr
