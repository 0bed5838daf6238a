"""Activations a dictionary reads and predicts, streamed from a corpus in bounded memory.

``layer_io(model, layer, kind, tokens, mask)`` runs one forward (stopping after the layer's MLP) and returns
the dictionary's (input, target) rows at real positions:

    transcoder / skip-transcoder   input = the MLP's input (ln2 of ``hook_resid_mid``), target = ``hook_mlp_out``
    sae                            input = target = ``hook_mlp_out``

:class:`BlockStream` is the shuffle buffer: the corpus is read in blocks of ``buffer_batches`` forward
batches; a block's rows are shuffled (a permutation seeded by (seed, epoch, block)) and served as training
batches before the next block is read. Memory is one block, never the corpus. Because blocks are fixed runs
of corpus batches and the shuffle is seeded, ``position = (epoch, block, step in block)`` says exactly where
a run is: resuming re-reads that block's forwards and skips the earlier blocks' forwards entirely
(tokenising only), so a killed training resumes to the same result.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from ..corpus import batches
from ..model.forward import mlp_input
from .config import DictionaryError


def layer_io(model, layer: int, kind: str, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(x [n, d_in], y [n, d_out]) float32 at the real positions of ``tokens`` (all if mask is None)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise DictionaryError(f"layer {layer}: the model has {model.cfg.n_layers} layer(s)")
    mid, out = f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out"
    cache = model.run(tokens, taps=[mid, out] if kind != "sae" else [out])
    y = cache[out]
    x = y if kind == "sae" else mlp_input(model.weights, layer, cache[mid])
    if mask is not None:
        m = mask.to(y.device)
        x, y = x[m], y[m]
    else:
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    return x.float(), y.float()


@dataclasses.dataclass
class Position:
    """Where a training run is in its stream: epoch, block within the epoch, optimiser step within the block."""

    epoch: int = 0
    block: int = 0
    step: int = 0


class BlockStream:
    """Training batches of (x, y) rows from ``stories`` (a list or a callable returning an iterable of
    story strings, re-read every epoch) through a shuffle buffer of ``buffer_batches`` forward batches."""

    def __init__(self, model, layer: int, kind: str, stories: Callable[[], Iterable[str]] | list[str],
                 batch_size: int, buffer_batches: int = 32, seq_batch: int = 8, max_len: int = 256,
                 seed: int = 0, store_dtype: torch.dtype = torch.float32):
        self.model, self.layer, self.kind = model, layer, kind
        self.stories = stories if callable(stories) else (lambda: stories)
        self.batch_size, self.buffer_batches = batch_size, buffer_batches
        self.seq_batch, self.max_len = seq_batch, min(max_len, model.cfg.n_ctx)
        self.seed, self.store_dtype = seed, store_dtype
        self.tokens_read = 0  # rows produced by forwards in this process (for tokens/s)

    def _corpus_batches(self):
        return batches(self.stories(), self.model.tokenizer, self.max_len, self.seq_batch)

    def blocks(self, start: Position) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """(epoch, block, x, y) from ``start`` on, shuffled; the earlier blocks of that epoch are skipped without
        running the model. Epochs repeat forever (the caller stops)."""
        epoch = start.epoch
        first_block = start.block
        while True:
            it = self._corpus_batches()
            block, got_any = 0, False
            while True:
                chunk = []
                for _ in range(self.buffer_batches):
                    b = next(it, None)
                    if b is None:
                        break
                    chunk.append(b)
                if not chunk:
                    break
                got_any = True
                if block >= first_block:
                    yield (epoch, block, *self._shuffled(epoch, block, chunk))
                block += 1
            if not got_any:
                raise DictionaryError("the training corpus gave no sequences")
            epoch, first_block = epoch + 1, 0

    def _shuffled(self, epoch: int, block: int, chunk) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for b in chunk:
            x, y = layer_io(self.model, self.layer, self.kind, b.tokens, b.mask)
            xs.append(x.to(self.store_dtype))
            ys.append(y.to(self.store_dtype))
        x, y = torch.cat(xs), torch.cat(ys)
        self.tokens_read += len(x)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + block)
        perm = torch.randperm(len(x), generator=g).to(x.device)
        return x[perm], y[perm]

    def steps(self, start: Position) -> Iterator[tuple[Position, Tensor, Tensor]]:
        """(position after this step, x batch, y batch) forever from ``start``: whole batches of each block
        (a block's last partial batch is dropped)."""
        for epoch, block, x, y in self.blocks(start):
            n = len(x) // self.batch_size
            if n == 0:
                continue
            first = start.step if (epoch, block) == (start.epoch, start.block) else 0
            for j in range(first, n):
                s = j * self.batch_size
                yield Position(epoch, block, j + 1), x[s:s + self.batch_size].float(), y[s:s + self.batch_size].float()


def io_batches(model, layer: int, kind: str, stories, max_len: int = 256, seq_batch: int = 8):
    """(batch, x, y) over a corpus in order (evaluation): x / y at the batch's real positions."""
    for b in batches(list(stories) if not isinstance(stories, list) else stories, model.tokenizer,
                     min(max_len, model.cfg.n_ctx), seq_batch):
        x, y = layer_io(model, layer, kind, b.tokens, b.mask)
        yield b, x, y
