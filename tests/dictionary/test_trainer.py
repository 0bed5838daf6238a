"""Training recovers planted rules from superposition; a SIGKILLed training resumes to the same dictionary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from circuitbook.demo.superposition import SUPERPOSITION_TRAINING, build_superposition, neuron_recovery, recovery
from circuitbook.dictionary import DictionaryConfig, DictionaryError, TrainConfig
from circuitbook.dictionary.trainer import train


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transcoder_recovers_every_planted_write_direction(seed):
    demo = build_superposition(seed)
    m = demo.model
    res = train(m, demo.stories, DictionaryConfig("transcoder", 0, m.cfg.d_model, 32, "topk", k=1),
                SUPERPOSITION_TRAINING(seed), progress=False)
    got = recovery(res.dictionary.W_dec.detach(), demo.truth)
    assert min(got.values()) >= 0.9, got
    assert min(neuron_recovery(m, demo.truth).values()) < 0.9  # no neuron alone is a rule (superposition)
    assert torch.allclose(res.dictionary.W_dec.norm(dim=1), torch.ones(32), atol=1e-4)  # unit decoder rows


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from circuitbook.demo.superposition import build_superposition
    from circuitbook.dictionary import DictionaryConfig, TrainConfig
    from circuitbook.dictionary.trainer import train
    demo = build_superposition(0, n_stories=60)
    m = demo.model
    kill_at = int(sys.argv[2])
    def die(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    r = train(m, demo.stories, DictionaryConfig("skip-transcoder", 0, m.cfg.d_model, 24, "topk", k=2),
              TrainConfig(tokens=128 * 40, batch_size=128, lr=3e-3, buffer_batches=2, seq_batch=8, max_len=64,
                          dead_tokens=300, checkpoint_every=7, resample_every=10),
              checkpoint=sys.argv[1], identity={"t": 1}, progress=False, on_checkpoint=die)
    torch.save(r.dictionary.tensors(), sys.argv[1] + ".out")
""")


def _run(ckpt: Path, kill_at: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(ckpt), str(kill_at)], env=env, timeout=600).returncode


def test_a_sigkilled_training_resumes_to_the_same_result(tmp_path):
    straight, killed = tmp_path / "a.pt", tmp_path / "b.pt"
    assert _run(straight, -1) == 0
    assert _run(killed, 21) == -signal.SIGKILL  # killed right after its checkpoint at step 21
    assert killed.exists() and not Path(str(killed) + ".out").exists()
    assert _run(killed, -1) == 0  # same command: resumes at step 21
    a = torch.load(str(straight) + ".out")
    b = torch.load(str(killed) + ".out")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_checkpoint_from_other_settings_is_refused(tmp_path, sp_demo):
    m = sp_demo.model
    cfg = DictionaryConfig("transcoder", 0, m.cfg.d_model, 16, "topk", k=1)
    tc = TrainConfig(tokens=128 * 3, batch_size=128, buffer_batches=2, seq_batch=8, max_len=64)
    train(m, sp_demo.stories[:20], cfg, tc, checkpoint=tmp_path / "c.pt", progress=False)
    with pytest.raises(DictionaryError, match="other dictionary settings"):
        train(m, sp_demo.stories[:20], DictionaryConfig("transcoder", 0, m.cfg.d_model, 16, "topk", k=2), tc,
              checkpoint=tmp_path / "c.pt", progress=False)
    with pytest.raises(DictionaryError, match="do not match the model's d_model"):
        train(m, sp_demo.stories[:20], DictionaryConfig("sae", 0, 8, 16, "relu"), tc, progress=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampling_keeps_the_reconstruction(seed):
    """Resampled features start quiet: on inputs that share a large direction (as an MLP's input after its norm
    does), resampling half the features leaves the batch's reconstruction error where it was, instead of
    letting the new features fire on every row and fill TopK (a 16k transcoder's FVU went 0.7 -> 761)."""
    from circuitbook.dictionary import Dictionary
    from circuitbook.dictionary.trainer import resample

    g = torch.Generator().manual_seed(seed)
    d_in, d_sae, n = 32, 64, 512
    d = Dictionary(DictionaryConfig("transcoder", 0, d_in, d_sae, "topk", k=4))
    d.init_weights(g)
    shared = torch.randn(d_in, generator=g)
    x = 4 * shared / shared.norm() * d_in ** 0.5 + torch.randn(n, d_in, generator=g)
    y = x @ torch.randn(d_in, d_in, generator=g) / d_in ** 0.5
    with torch.no_grad():
        d.b_dec.copy_(y.mean(0))
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    fvu = lambda: float((y - d(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())  # noqa: E731
    before = fvu()
    mass = torch.ones(d_sae)
    mass[d_sae // 2:] = 0.0
    assert resample(d, opt, x, y, mass, seed, 1) == d_sae // 2
    assert fvu() <= before * 1.05 + 0.05
