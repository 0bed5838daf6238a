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
