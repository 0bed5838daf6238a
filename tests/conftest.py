"""Shared fixtures. Tests may read ../shared/assets in place (never copied into the repo)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# circuitbook.tune caches its measured kernel choices per machine: the suite keeps its own, not the user's
os.environ.setdefault("CIRCUITBOOK_CACHE_DIR", tempfile.mkdtemp(prefix="circuitbook-test-cache-"))

# ../shared/assets beside the checkout; CIRCUITBOOK_ASSETS names another place (a git worktree elsewhere)
ASSETS = Path(os.environ.get("CIRCUITBOOK_ASSETS") or Path(__file__).resolve().parents[2] / "shared" / "assets")


def asset(*parts: str) -> Path:
    p = ASSETS.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset {p} not present")
    return p


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    return asset("gpt2-tokenizer")


@pytest.fixture(scope="session")
def stories_path() -> Path:
    return asset("tinystories-text", "TinyStories-valid.prefix-1841stories.txt")


@pytest.fixture(scope="session")
def ts1l_dir() -> Path:
    return asset("ts-1l-dev")


@pytest.fixture(scope="session")
def ts656k_dir() -> Path:
    return asset("tinystories-656K")


@pytest.fixture(scope="session")
def ts1l(ts1l_dir):
    from circuitbook.model import load_model

    return load_model(ts1l_dir)


@pytest.fixture(autouse=True, scope="module")
def _threads_restored(request):
    """A test module that changes torch's thread count must put it back: later modules compare results
    computed in this process with ones from fresh processes, and float sums differ across thread counts."""
    import torch

    n = torch.get_num_threads()
    yield
    left = torch.get_num_threads()
    if left != n:
        torch.set_num_threads(n)
        pytest.fail(f"{request.module.__name__} left torch at {left} threads (was {n})")
