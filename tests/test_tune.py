"""circuitbook.tune: the screening dtype is measured once, cached per machine outside the repo, overridable."""

import json

import pytest
import torch

from circuitbook import tune


def test_choice_is_measured_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(tune.ENV_DIR, str(tmp_path))
    monkeypatch.delenv(tune.ENV_DTYPE, raising=False)
    first = tune.screen_choice(64, 4096, 64)
    assert first["source"] == "measured" and first["dtype"] in tune.DTYPES
    assert first["dtype"] == max(first["gflops"], key=first["gflops"].get)  # the faster one
    path = tune.cache_path()
    assert path.parent == tmp_path and path.name.startswith("tune-")
    assert json.loads(path.read_text())["screen:64x4096"]["dtype"] == first["dtype"]
    again = tune.screen_choice(64, 4000, 100)  # same shape class: read from the cache
    assert again["source"] == "cache" and again["dtype"] == first["dtype"]
    assert tune.choices()["choices"]["screen:64x4096"]["dtype"] == first["dtype"]


def test_env_override_and_bad_value(tmp_path, monkeypatch):
    monkeypatch.setenv(tune.ENV_DIR, str(tmp_path))
    monkeypatch.setenv(tune.ENV_DTYPE, "bf16")
    assert tune.screen_dtype(64, 50257, 300) == torch.bfloat16
    monkeypatch.setenv(tune.ENV_DTYPE, "fp16")
    with pytest.raises(tune.TuneError, match="fp16"):
        tune.screen_choice(64, 50257, 300)
    assert not list(tmp_path.iterdir())  # an override measures and writes nothing


def test_cpu_line_names_the_cpu():
    info = tune.cpu_info()
    assert info["model"] and info["torch"] == torch.__version__
    assert set(info["flags"]) <= set(tune.FLAGS)
    assert info["model"] in tune.cpu_line()


def test_bf16_warning_only_when_bf16_measures_slower(tmp_path, monkeypatch):
    monkeypatch.setenv(tune.ENV_DIR, str(tmp_path))
    c = tune.forward_choice(64, 256)
    msg = tune.bf16_warning(64, 256)  # cached now: the same choice
    assert (msg is None) == (c["dtype"] == "bf16")
    entries = json.loads(tune.cache_path().read_text())
    entries["forward:64x256"] = {"dtype": "fp32", "gflops": {"fp32": 80.0, "bf16": 2.0}}
    tune.cache_path().write_text(json.dumps(entries))
    assert "slower than float32" in tune.bf16_warning(64, 256) and "2.0 vs 80.0" in tune.bf16_warning(64, 256)
