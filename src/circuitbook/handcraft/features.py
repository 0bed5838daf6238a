"""Dictionary features in handcraft: a dictionary spliced in place of its layer's MLP, some features edited.

The handcraft stage sits left of ``dictionary/`` (``docs/architecture.md``), so it does not load
dictionaries: ``circuitbook.dictionary.handcraft`` turns a stored one into the plain record
:class:`FeatureDictionary`, whose ``encode`` / ``decode`` are the dictionary's own
(``dictionary.model.Dictionary``: one definition of TopK / ReLU / JumpReLU and of the skip term). The
splice, for layer L, in one forward (:func:`splice_interventions`):

    x    = what the dictionary reads: LN2(blocks.L.hook_resid_mid) (transcoders, ``model.forward.mlp_input``)
           or blocks.L.hook_mlp_out (SAEs)
    f    = encode(x)                         feature activations [..., n]
    err  = mlp_out - decode(f, x)            the error term: what the dictionary misses
    f'   = edit(f)                           features ablated (zero / mean) or set to 0 where replaced
    out  = decode(f', x) + add(x_mlp) (+ err when error is "keep")     written as blocks.L.hook_mlp_out

``add`` is what handcrafted units write in place of replaced features: unit u computes
``a_u = act_fn(x_mlp @ w_in_u + b_in_u)`` (the model's MLP activation, ungated) on the MLP's input and
writes ``a_u * w_out_u``; with ``w_out_u = W_dec[i]`` that is exactly feature i's activation replaced by
a_u. With no edit and the error kept, ``out`` is the MLP's output (float rounding aside); dropping the
error gives the dictionary's own reconstruction (``dictionary/splice.py`` measures both with this function).

Feature ablation: zero sets f_i = 0; mean sets f_i to its mean over the real positions of a corpus
(:func:`feature_means`, BOS included, as :func:`.splice.unit_means` does for neurons).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
from torch import Tensor

from ..model import Weights, run
from ..model.forward import mlp_input
from ..model.maths import activation
from ..progress import progress as progress_bar
from .splice import SpliceError

ERROR_MODES = ("keep", "drop")
"""Whether a splice adds the dictionary's error term back: "keep" (the default everywhere) or "drop"."""


@dataclasses.dataclass(frozen=True)
class FeatureDictionary:
    """One dictionary as handcraft reads it (see the module docstring)."""

    name: str
    """Its name in the book."""
    number: int
    """Its number in the book: the ``layer`` slot of its units, ``feature/{number}/{idx}``."""
    layer: int
    """The model layer whose MLP it stands in for."""
    kind: str
    """"transcoder", "skip-transcoder" or "sae"."""
    W_enc: Tensor
    """[d_in, n] encoder: feature i reads W_enc[:, i] (+ b_enc[i])."""
    b_enc: Tensor
    """[n] encoder bias."""
    W_dec: Tensor
    """[n, d_model] decoder rows: what one unit of feature i's activation writes."""
    encode: Callable[[Tensor], Tensor]
    """x [..., d_in] -> feature activations [..., n] (the dictionary's own)."""
    decode: Callable[[Tensor, Tensor], Tensor]
    """(f [..., n], x [..., d_in]) -> output [..., d_model] (b_dec and any skip term included)."""

    @property
    def n_features(self) -> int:
        return int(self.W_dec.shape[0])

    @property
    def reads_output(self) -> bool:
        """An SAE reads (and reconstructs) the MLP's output; transcoders read its input."""
        return self.kind == "sae"

    def describe(self) -> str:
        return f"dictionary {self.name!r} ({self.kind}, layer {self.layer}, {self.n_features} features)"

    def check_index(self, idx: int, where: str = "") -> int:
        """``idx`` if it is a feature of this dictionary, else SpliceError naming both."""
        if not 0 <= int(idx) < self.n_features:
            raise SpliceError(f"{where + ': ' if where else ''}feature {idx} does not exist "
                              f"({self.describe()} has features 0..{self.n_features - 1})")
        return int(idx)

    def check(self, cfg) -> None:
        """SpliceError unless this dictionary fits the model described by ``cfg`` (a ModelConfig)."""
        if not 0 <= self.layer < cfg.n_layers:
            raise SpliceError(f"{self.describe()} stands in for layer {self.layer}, but the model has "
                              f"{cfg.n_layers} layer(s)")
        for name, got in (("W_enc", self.W_enc.shape[0]), ("W_dec", self.W_dec.shape[1])):
            want = cfg.d_model
            if got != want:
                raise SpliceError(f"{self.describe()}: {name} has width {got}, the model's d_model is {want}")


def _reads(fd: FeatureDictionary) -> str:
    return f"blocks.{fd.layer}.hook_mlp_out" if fd.reads_output else f"blocks.{fd.layer}.hook_resid_mid"


def splice_interventions(weights: Weights, fd: FeatureDictionary, edit: Callable[[Tensor], Tensor] | None = None,
                         add: Callable[[Tensor], Tensor] | None = None, error: str = "keep") -> dict:
    """Forward interventions putting ``fd`` in place of its layer's MLP (the module docstring's maths).

    ``edit``: f [..., n] -> f' (None: unchanged). ``add``: the MLP's input x_mlp [..., d_model] -> an extra
    write [..., d_model] (handcrafted units). ``error``: "keep" adds the error term back, "drop" does not."""
    if error not in ERROR_MODES:
        raise SpliceError(f"the error term is kept or dropped (keep | drop), not {error!r}")
    fd.check(weights.cfg)
    L = fd.layer
    box: dict[str, Tensor] = {}
    need_input = not fd.reads_output or add is not None

    def capture(resid):
        box["x"] = mlp_input(weights, L, resid)
        return resid

    def replace(out):
        x_mlp = box.pop("x") if need_input else None
        x = (out if fd.reads_output else x_mlp).float()
        f = fd.encode(x)
        y = fd.decode(f, x).to(out.dtype)
        y_new = y if edit is None else fd.decode(edit(f), x).to(out.dtype)
        if add is not None:
            y_new = y_new + add(x_mlp).to(out.dtype)
        return y_new + (out - y) if error == "keep" else y_new

    iv = {f"blocks.{L}.hook_mlp_out": replace}
    if need_input:
        iv[f"blocks.{L}.hook_resid_mid"] = capture
    return iv


def units_writer(weights: Weights, W_in: Tensor, b_in: Tensor, W_out: Tensor) -> Callable[[Tensor], Tensor]:
    """``add`` for :func:`splice_interventions`: k handcrafted units reading x_mlp through W_in [d_model, k]
    (+ b_in [k]) with the model's MLP activation and writing W_out [k, d_model]."""
    act_fn = weights.cfg.act_fn

    def add(x):
        return activation(x.float() @ W_in.float() + b_in.float(), act_fn) @ W_out.float()

    return add


def ablate_features(keep: Iterable[int] | None, replaced: Iterable[int], n: int, mode: str,
                    means: Tensor | None) -> Callable[[Tensor], Tensor]:
    """``edit`` for :func:`splice_interventions`: features in ``keep`` (None: every one) keep their
    activation, the others are zero- or mean-ablated; features in ``replaced`` are set to 0 (their
    handcrafted units write instead)."""
    if mode not in ("zero", "mean"):
        raise SpliceError(f"feature ablation mode must be zero or mean, not {mode!r}")
    if mode == "mean" and means is None:
        raise SpliceError("mean ablation of features needs their means (feature_means)")
    kept = torch.ones(n, dtype=torch.bool)
    if keep is not None:
        kept[:] = False
        kept[list(keep)] = True
    zero = torch.zeros(n, dtype=torch.bool)
    zero[list(replaced)] = True
    fill = means.float() if mode == "mean" else torch.zeros(n)

    def edit(f):
        k, z, v = kept.to(f.device), zero.to(f.device), fill.to(f.device, f.dtype)
        return torch.where(z, torch.zeros((), dtype=f.dtype, device=f.device), torch.where(k, f, v))

    return edit


@torch.no_grad()
def feature_means(weights: Weights, fd: FeatureDictionary, batches: Iterable, progress: bool = False) -> Tensor:
    """Mean activation [n] of every feature of ``fd`` over the real positions of ``batches``."""
    tap = _reads(fd)
    tot = torch.zeros(fd.n_features, dtype=torch.float64)
    n = 0
    for b in progress_bar(batches, desc="feature means", unit="batch", enabled=progress):
        toks, m = b.tokens.to(weights.device), b.mask.to(weights.device)
        x = run(weights, toks, (tap,))[tap]
        x = x if fd.reads_output else mlp_input(weights, fd.layer, x)
        tot += fd.encode(x[m].float()).double().sum(0).cpu()
        n += int(m.sum())
    if n == 0:
        raise SpliceError("the corpus gave no tokens to average the features over")
    return (tot / n).float()


def merge_interventions(*ivs: dict) -> dict:
    """One interventions dict from several that touch different layers (SpliceError on a clash)."""
    out: dict = {}
    for iv in ivs:
        clash = sorted(set(out) & set(iv))
        if clash:
            raise SpliceError(f"two splices replace the same activation {clash[0]}")
        out.update(iv)
    return out


# --------------------------------------------------------------------------- a built spec's splices
@dataclasses.dataclass
class ReplacedFeatures:
    """One dictionary of a built spec: the features handcrafted units replace, and those units.

    ``idx`` [k] the replaced features; the units read W_in [d_model, k] (+ b_in [k]) and write W_out [k, d_model];
    ``names`` the spec names of the units; ``means`` [n] the features' means (mean-ablation baseline)."""

    fd: FeatureDictionary
    idx: list[int]
    W_in: Tensor
    b_in: Tensor
    W_out: Tensor
    names: list[str]
    means: Tensor | None = None


@dataclasses.dataclass
class FeatureSplice:
    """Every dictionary a built spec splices in (at most one per layer) and whether the error term is kept."""

    parts: list[ReplacedFeatures]
    error: str = "keep"

    def handcrafted(self, weights: Weights) -> dict:
        """The handcrafted model's interventions: replaced features set to 0, their units' writes added."""
        return merge_interventions(*[splice_interventions(
            weights, p.fd, ablate_features(None, p.idx, p.fd.n_features, "zero", None),
            units_writer(weights, p.W_in, p.b_in, p.W_out), self.error) for p in self.parts])

    def ablated(self, weights: Weights, mode: str) -> dict:
        """A baseline's interventions: the replaced features zero- or mean-ablated, nothing added."""
        return merge_interventions(*[splice_interventions(
            weights, p.fd, ablate_features([i for i in range(p.fd.n_features) if i not in set(p.idx)], [],
                                           p.fd.n_features, mode, p.means), None, self.error) for p in self.parts])

    def plain(self, weights: Weights) -> dict:
        """The dictionaries spliced in as they are (the reference a handcrafted feature is compared with)."""
        return merge_interventions(*[splice_interventions(weights, p.fd, None, None, self.error) for p in self.parts])

    def settings(self) -> dict:
        """What is printed and stored with the evaluation."""
        return {"dictionary_error": self.error,
                "dictionaries": [{"name": p.fd.name, "number": p.fd.number, "kind": p.fd.kind, "layer": p.fd.layer,
                                  "replaced": list(p.idx)} for p in self.parts]}
