from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo():
    from circuitbook.demo import build_demo

    return build_demo(seed=0, d_mlp=32, n_stories=120)


@pytest.fixture(scope="session")
def demo_fit(demo):
    from circuitbook.corpus import batches

    return lambda: batches(demo.stories[:60], demo.model.tokenizer, 256, 16)


@pytest.fixture(scope="session")
def demo_eval(demo):
    from circuitbook.corpus import batches

    return lambda: batches(demo.stories[60:], demo.model.tokenizer, 256, 16)
