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
from ..model.maths import normalize
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
                     progress: bool = True, n_null: int = 0, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stream the corpus; return (means [n_units, N], counts [N], null means [n_layers * n_null, N] or None):
    mean hook_post of every neuron over the positions holding each universe token (BOS positions excluded),
    and the same for ``n_null`` random-direction units per layer (``null_directions``: the linear read
    ``normalize(resid_mid) @ r`` of what the layer's MLP sees). Memory: one batch + [N, n_units + nulls]."""
    from ..progress import progress as progress_bar

    cfg = model.cfg
    pos_of = torch.as_tensor(Universe(ids, ids, [], ids).index(cfg.d_vocab))
    R = null_directions(cfg.d_model, cfg.n_layers, n_null, seed) if n_null else None
    width = cfg.n_layers * (cfg.d_mlp + n_null)
    sums = torch.zeros(len(ids), width, dtype=torch.float64)
    counts = torch.zeros(len(ids), dtype=torch.float64)
    taps = [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)]
    mids = [f"blocks.{l}.hook_resid_mid" for l in range(cfg.n_layers)] if n_null else []
    bar = progress_bar(desc="activations", unit=" tok", enabled=progress)
    for b in batches(stories, model.tokenizer, max_len, batch_size):
        acts = model.run(b.tokens, taps + mids)
        parts = [acts[t].float() for t in taps]
        parts += [normalize(acts[m], cfg.norm, cfg.eps) @ R[l] for l, m in enumerate(mids)]
        a = torch.cat(parts, -1).cpu()  # [B, T, width]
        keep = b.mask.clone()
        keep[:, 0] = False  # BOS
        u = pos_of[b.tokens]
        keep &= u >= 0
        sums.index_add_(0, u[keep], a[keep].double())
        counts.index_add_(0, u[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
        bar.update(int(b.mask.sum()))
    bar.close()
    means = (sums / counts.clamp(min=1)[:, None]).T.float().numpy()
    n_units = cfg.n_layers * cfg.d_mlp
    return means[:n_units], counts.numpy(), (means[n_units:] if n_null else None)


def null_directions(d_model: int, n_layers: int, n: int, seed: int) -> torch.Tensor:
    """[n_layers, d_model, n] isotropic Gaussian directions, one set per layer (seeded)."""
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(n_layers, d_model, n, generator=g)


@dataclasses.dataclass
class NullUnits:
    """Random-direction units read through the same three score matrices as the neurons, each [R, N] over the
    universe: ``act_means`` (None without an activation pass), ``in_effect`` and ``out_scores``. Typing
    measures how enriched, overlapping and coherent the sets of units with no mechanism come out in this
    model's geometry, and calibrates every test on them (``classify.calibrate``)."""

    in_effect: np.ndarray
    out_scores: np.ndarray
    act_means: np.ndarray | None = None


@torch.inference_mode()
def random_units(weights, ids: np.ndarray, n: int = 512, seed: int = 0, act_means: np.ndarray | None = None
                 ) -> NullUnits:
    """``n`` random-direction units (isotropic Gaussian input and output directions in d_model) read through
    the same direct paths as the neurons (``embed @ r_in``, ``r_out @ W_U``, processed weights), with the
    activation means of the activation pass's null units when given: the null typing is calibrated on."""
    b = make_basis(weights)
    g = torch.Generator().manual_seed(seed)
    d = b.cfg.d_model
    idx = torch.as_tensor(ids)
    r_in = torch.randn(d, n, generator=g)
    r_out = torch.randn(n, d, generator=g)
    return NullUnits((b.embed[idx].float() @ r_in).T.numpy(), (r_out @ b.w.W_U[:, idx].float()).numpy(), act_means)
