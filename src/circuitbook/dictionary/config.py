"""What a dictionary is (:class:`DictionaryConfig`) and how one is trained (:class:`TrainConfig`).

Every field carries its own docstring (as EleutherAI sparsify's configs do), so ``help(DictionaryConfig)``
and the CLI's ``--help`` say the same thing. Both round-trip through plain dicts (``to_dict`` /
``from_dict``), which is how the book and the checkpoints store them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import CircuitbookError

KINDS = ("transcoder", "skip-transcoder", "sae")
ACTIVATIONS = ("topk", "relu", "jumprelu")


class DictionaryError(CircuitbookError, ValueError):
    """A dictionary that cannot be built, loaded, trained or used as asked (the message says why)."""


@dataclasses.dataclass
class DictionaryConfig:
    """The shape and semantics of one dictionary (everything needed to run it, nothing about training)."""

    kind: str
    """"transcoder" (reads the MLP input, the output of ln2, and predicts the MLP output), "skip-transcoder"
    (a transcoder plus a dense linear skip W_skip from input to output) or "sae" (reconstructs the MLP
    output from itself)."""

    layer: int
    """The model layer whose MLP the dictionary reads/replaces."""

    d_in: int
    """Width of the input (d_model for every kind here)."""

    d_sae: int
    """Number of features (dictionary width)."""

    activation: str = "topk"
    """"topk" (keep the k largest pre-activations, then ReLU), "relu" (trained with an L1 penalty) or
    "jumprelu" (ReLU, zero below a per-feature threshold; loaded from other tools)."""

    k: int | None = None
    """Active features per token for "topk" (required there, ignored otherwise)."""

    d_out: int | None = None
    """Width of the output; None means d_in (every kind here writes d_model)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DictionaryError(f"dictionary kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise DictionaryError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        for name in ("layer", "d_in", "d_sae"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "layer" else 1):
                raise DictionaryError(f"dictionary {name} must be a {'non-negative' if name == 'layer' else 'positive'} "
                                      f"integer, not {v!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        if self.activation == "topk":
            if not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise DictionaryError(f"a TopK dictionary needs 1 <= k <= d_sae ({self.d_sae}), not k={self.k!r}")

    @property
    def skip(self) -> bool:
        return self.kind == "skip-transcoder"

    @property
    def reads(self) -> str:
        """The activation the dictionary encodes (a model/forward.py tap, or ln2's output for transcoders)."""
        return f"blocks.{self.layer}.hook_mlp_out" if self.kind == "sae" else f"blocks.{self.layer}.ln2.hook_normalized"

    @property
    def writes(self) -> str:
        return f"blocks.{self.layer}.hook_mlp_out"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DictionaryConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass
class TrainConfig:
    """How a dictionary is trained on a corpus's activations (the trainer in :mod:`.trainer`)."""

    tokens: int = 2_000_000
    """Training tokens (activation rows) in all; the corpus is re-read (epoch after epoch) until reached."""

    batch_size: int = 4096
    """Activation rows per optimiser step."""

    lr: float | None = None
    """Adam learning rate; None: 2e-4 / sqrt(d_sae / 2**14) (sparsify's default scaling)."""

    lr_decay: float = 0.2
    """Fraction of the steps at the end over which the learning rate decays linearly to 0."""

    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up at the start."""

    l1_coeff: float = 1e-3
    """L1 penalty on feature activations (times unit decoder norms) for "relu" dictionaries."""

    aux_k_coeff: float = 1 / 32
    """Weight of the AuxK loss (dead features predict the residual error; Gao et al. 2024, App. B.1)."""

    aux_k: int | None = None
    """Dead features used by AuxK per token; None: d_out // 2."""

    dead_tokens: int = 200_000
    """A feature that has not fired for this many training tokens counts as dead (enters AuxK)."""

    resample_every: int = 0
    """Every this many steps (0: never; only in the first half of training) re-initialise the little-used
    features (activation mass below 1% of the largest since the last resample) towards the batch's worst-
    reconstructed rows, sampled with probability proportional to their squared error (Bricken et al. 2023's
    resampling, applied to under-used as well as dead features; Adam's state for them is reset)."""

    buffer_batches: int = 32
    """Corpus batches (of ``seq_batch`` sequences) per shuffle block: the bounded buffer of activations that
    is shuffled and trained on before the next is read (memory ~ buffer_batches * seq_batch * max_len rows)."""

    seq_batch: int = 8
    """Sequences per model forward while collecting activations."""

    max_len: int = 256
    """Tokens per sequence (BOS included) when cutting stories into sequences."""

    dtype: str = "fp32"
    """"fp32" or "bf16": precision of the stored activations and of the dense encoder matmul (weights and
    Adam state stay float32)."""

    seed: int = 0
    """Seeds the initialisation and every block's shuffle."""

    checkpoint_every: int = 50
    """Optimiser steps between checkpoints (also one at the end); a killed run resumes from the last one."""

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            raise DictionaryError(f"training dtype must be fp32 or bf16, not {self.dtype!r}")
        for name in ("tokens", "batch_size", "buffer_batches", "seq_batch", "max_len", "checkpoint_every", "dead_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise DictionaryError(f"training setting {name} must be a positive integer, not {v!r}")
        if self.tokens < self.batch_size:
            raise DictionaryError(f"tokens ({self.tokens}) must be at least one batch ({self.batch_size})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
