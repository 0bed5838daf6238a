"""What typing reads about each neuron, per vocabulary token of a universe: input and output scores.

Units are all MLP neurons, flattened layer-major: unit u = layer * d_mlp + neuron. A *universe* is the
vocabulary tokens seen at least ``min_count`` times in the corpus, with their dominant POS class.

Three score matrices, each [n_units, N] over the universe's tokens (in universe order):
  * activation means  — mean of ``blocks.{l}.mlp.hook_post`` over the corpus positions holding token t
    (from the scan's per-token-id means in the book when present, else computed here by streaming the corpus);
  * input effect      — direct path from the embedding: ``act(normalize(W_E[t] + mean W_pos[:256]) @ W_in
    + b_in)`` on processed weights (ln2 folded), i.e. what the neuron would do on token t with attention removed (the
    circuits stage's definition and position window, :func:`circuitbook.circuits.neuron_in.direct_input`);
  * output effect     — direct logit effect ``W_out[l][n] @ W_U[:, t]`` on processed weights (final norm folded,
    unembedding centred; :func:`circuitbook.circuits.neuron_out.direct_output`). The final norm's scale is left
    out: it rescales a whole row and never reorders tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..circuits.basis import make_basis, token_inputs
from ..circuits.neuron_in import direct_input
from ..circuits.neuron_out import direct_output
from ..corpus import batches
from ..errors import CircuitbookError
from .pos import CLASSES, TokenClasses


@dataclasses.dataclass
class Universe:
    """The tokens typing tests against. ids [N] vocabulary ids (ascending); cls [N] dominant class index
    into CLASSES; tags [N] dominant fine tag; counts [N] corpus occurrences."""

    ids: np.ndarray
    cls: np.ndarray
    tags: list[str]
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, d_vocab: int) -> np.ndarray:
        """[d_vocab] position of each vocabulary id in the universe, -1 if absent."""
        pos = np.full(d_vocab, -1, dtype=np.int64)
        pos[self.ids] = np.arange(len(self.ids))
        return pos


def universe(tc: TokenClasses, min_count: int = 5) -> Universe:
    n = tc.n
    ids = np.flatnonzero(n >= min_count)
    if len(ids) < 2 * len(CLASSES):
        raise CircuitbookError(f"only {len(ids)} vocabulary tokens occur at least {min_count} times in the corpus: "
                               f"too few to type neurons (use a larger corpus or a smaller --min-count)")
    return Universe(ids, tc.dominant[ids], [tc.dominant_tag(int(i)) or "_UNK" for i in ids], n[ids])


def embed(weights, ids: np.ndarray) -> torch.Tensor:
    """[N, d_model] what the first norm outputs for each token at an average position (processed weights:
    the norm is weightless): the circuits basis' token input (:func:`circuitbook.circuits.basis.token_inputs`,
    same position window). Rotary models have no W_pos."""
    return token_inputs(weights, ids).float()


@torch.inference_mode()
def input_effect(weights, ids: np.ndarray) -> np.ndarray:
    """[n_units, N] the neuron's activation on each token through the direct path (see module docstring):
    the circuits stage's direct input (:func:`circuitbook.circuits.neuron_in.direct_input`), activated."""
    b = make_basis(weights)
    return torch.cat([direct_input(b, l, tokens=ids, post=True) for l in range(b.cfg.n_layers)]).numpy()


@torch.inference_mode()
def output_effect(weights, ids: np.ndarray) -> np.ndarray:
    """[n_units, N] direct logit effect of one unit of activation of each neuron on each token: the circuits
    stage's direct output (:func:`circuitbook.circuits.neuron_out.direct_output`) with unit norm scales."""
    b = make_basis(weights)
    return torch.cat([direct_output(b, l, ids) for l in range(b.cfg.n_layers)]).numpy()


@torch.inference_mode()
def activation_means(model, stories, ids: np.ndarray, max_len: int = 256, batch_size: int = 16,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Stream the corpus; return (means [n_units, N], counts [N]): mean hook_post of every neuron over the
    positions holding each universe token (BOS positions excluded). Memory: one batch + [N, n_units]."""
    from ..progress import progress as progress_bar

    cfg = model.cfg
    pos_of = torch.as_tensor(Universe(ids, ids, [], ids).index(cfg.d_vocab))
    sums = torch.zeros(len(ids), cfg.n_layers * cfg.d_mlp, dtype=torch.float64)
    counts = torch.zeros(len(ids), dtype=torch.float64)
    taps = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    bar = progress_bar(desc="activations", unit=" tok", enabled=progress)
    for b in batches(stories, model.tokenizer, max_len, batch_size):
        acts = model.run(b.tokens, taps)
        a = torch.cat([acts[t] for t in taps], -1).float().cpu()  # [B, T, n_units]
        keep = b.mask.clone()
        keep[:, 0] = False  # BOS
        u = pos_of[b.tokens]
        keep &= u >= 0
        sums.index_add_(0, u[keep], a[keep].double())
        counts.index_add_(0, u[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
        bar.update(int(b.mask.sum()))
    bar.close()
    means = sums / counts.clamp(min=1)[:, None]
    return means.T.float().numpy(), counts.numpy()
