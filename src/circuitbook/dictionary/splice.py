"""The MLP replaced by its dictionary: cross-entropy, KL and loss recovered, plus the reconstruction metrics.

On a corpus, at every real position with a next token, five forwards of the same batch:

    original         the model as it is
    spliced          ``blocks.L.hook_mlp_out`` replaced by the dictionary's output (a transcoder reads the MLP's
                     input, ln2 of ``hook_resid_mid``, captured in the same forward; an SAE reads hook_mlp_out)
    spliced + error  the same plus the error term (mlp_out - dictionary output) computed in that forward: a
                     check that splicing itself is exact (CE equals the original's up to float rounding)
    zero             hook_mlp_out set to 0 (the MLP removed, its output bias too)
    mean             hook_mlp_out set to its mean over ``mean_stories`` (the training corpus, capped), or over
                     the evaluation corpus when none is given

loss recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_original) against each ablation
(:func:`circuitbook.handcraft.evaluate.recovered`, the same formula handcraft reports). KL is
KL(original || spliced), nats per token. Interventions go through ``model/forward.py``'s ``interventions``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..corpus import batches
from ..handcraft.evaluate import recovered
from ..handcraft.features import splice_interventions
from ..model.forward import mlp_input
from .activations import layer_io
from .config import DictionaryError
from .metrics import Reconstruction, ReconstructionMeter
from .model import Dictionary


@dataclasses.dataclass
class SpliceResult:
    """Figures of one dictionary on one corpus (nats per predicted token over ``n_tokens`` positions)."""

    n_tokens: int
    ce_original: float
    ce_spliced: float
    ce_spliced_error: float
    ce_zero: float
    ce_mean: float
    kl: float
    kl_error: float
    recovered_zero: float | None
    recovered_mean: float | None
    recovered_zero_error: float | None
    recovered_mean_error: float | None
    reconstruction: Reconstruction

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "reconstruction"}
        d.update(self.reconstruction.to_dict())
        return d

    def summary(self) -> str:
        r = self.reconstruction
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        fvu = f"{r.fvu:.4f}" if r.fvu is not None and math.isfinite(r.fvu) else "n/a"  # 0/0: a constant target
        return (f"{r.n_tokens} tokens: L0 {r.l0:.1f}, FVU {fvu}, dead {r.dead_fraction:.3f}, "
                f"dense {r.dense_fraction:.3f}\n"
                f"CE original {self.ce_original:.4f}, spliced {self.ce_spliced:.4f} (KL {self.kl:.4f}), with error "
                f"term {self.ce_spliced_error:.4f} (KL {self.kl_error:.2e}); zero-ablated MLP {self.ce_zero:.4f}, "
                f"mean-ablated {self.ce_mean:.4f}\n"
                f"loss recovered vs mean ablation {f(self.recovered_mean)}, vs zero ablation {f(self.recovered_zero)}")


def mean_mlp_out(model, layer: int, stories: Iterable[str], max_tokens: int = 200_000, max_len: int = 256,
                 seq_batch: int = 8) -> Tensor:
    """Mean of ``blocks.L.hook_mlp_out`` over the real positions of ``stories`` (up to ``max_tokens``)."""
    tot, n = None, 0
    for b in batches(stories, model.tokenizer, min(max_len, model.cfg.n_ctx), seq_batch):
        _, y = layer_io(model, layer, "sae", b.tokens, b.mask)
        s = y.double().sum(0)
        tot, n = (s if tot is None else tot + s), n + len(y)
        if n >= max_tokens:
            break
    if not n:
        raise DictionaryError("no tokens to measure the MLP's mean output on")
    return (tot / n).float()


def _replace(model, d: Dictionary, with_error: bool):
    """Interventions that put the dictionary's output in place of hook_mlp_out (captured input for transcoders):
    handcraft's splice (``handcraft.features.splice_interventions``), no feature edited."""
    from .handcraft import feature_dictionary  # (it imports store, which imports this module)

    return splice_interventions(model.weights, feature_dictionary(d, device=model.weights.W_E.device),
                                error="keep" if with_error else "drop")


def _logp(model, tokens, interventions=None) -> Tensor:
    return model.run(tokens, ("logits",), interventions)["logits"][:, :-1].float().log_softmax(-1)


@torch.no_grad()
def evaluate_splice(model, d: Dictionary, stories: Iterable[str], mean_out: Tensor | None = None,
                    mean_stories: Iterable[str] | None = None, max_len: int = 256, seq_batch: int = 8,
                    progress: bool = False) -> SpliceResult:
    """Splice ``d`` into ``model`` and measure it on ``stories`` (see the module docstring)."""
    if d.cfg.d_in != model.cfg.d_model:
        raise DictionaryError(f"the dictionary reads d_in={d.cfg.d_in} but the model's d_model is {model.cfg.d_model}")
    if not 0 <= d.cfg.layer < model.cfg.n_layers:
        raise DictionaryError(f"the dictionary is for layer {d.cfg.layer}; the model has {model.cfg.n_layers}")
    stories = list(stories)
    L = d.cfg.layer
    dev = model.weights.device
    d = d.to(dev).eval()
    if mean_out is None:
        mean_out = mean_mlp_out(model, L, mean_stories if mean_stories is not None else stories, max_len=max_len)
    mean_out = mean_out.to(dev)
    out_name, mid = f"blocks.{L}.hook_mlp_out", f"blocks.{L}.hook_resid_mid"
    ablations = {"zero": {out_name: torch.zeros_like}, "mean": {out_name: lambda o: mean_out.to(o.dtype).expand_as(o)}}
    spliced, spliced_err = _replace(model, d, False), _replace(model, d, True)
    meter = ReconstructionMeter(d.cfg.d_sae)
    tot = dict.fromkeys(("orig", "spl", "err", "zero", "mean", "kl", "kl_err"), 0.0)
    n = 0
    for b in tqdm(list(batches(stories, model.tokenizer, min(max_len, model.cfg.n_ctx), seq_batch)),
                  desc="evaluate dictionary", unit="batch", disable=not progress):
        tokens = b.tokens.to(dev)
        tgt, m = tokens[:, 1:], b.mask[:, 1:].to(dev)
        cache = model.run(tokens, (mid, out_name, "logits"))
        y = cache[out_name][b.mask.to(dev)].float()
        x = y if d.cfg.kind == "sae" else mlp_input(model.weights, L, cache[mid])[b.mask.to(dev)].float()
        f = d.encode(x)
        meter.add(f, y, d.decode(f, x))
        if not m.any():
            continue
        lo = cache["logits"][:, :-1].float().log_softmax(-1)
        pick = lambda lp: -float(lp.gather(-1, tgt[..., None])[..., 0][m].double().sum())  # noqa: E731
        kl = lambda lp: float((lo.exp() * (lo - lp)).sum(-1)[m].double().sum())  # noqa: E731
        tot["orig"] += pick(lo)
        ls = _logp(model, tokens, spliced)
        tot["spl"] += pick(ls)
        tot["kl"] += kl(ls)
        le = _logp(model, tokens, spliced_err)
        tot["err"] += pick(le)
        tot["kl_err"] += kl(le)
        for name, iv in ablations.items():
            tot[name] += pick(_logp(model, tokens, iv))
        n += int(m.sum())
    if n == 0:
        raise DictionaryError("the evaluation corpus gave no positions to score")
    ce = {k: v / n for k, v in tot.items()}
    return SpliceResult(
        n_tokens=n, ce_original=ce["orig"], ce_spliced=ce["spl"], ce_spliced_error=ce["err"], ce_zero=ce["zero"],
        ce_mean=ce["mean"], kl=ce["kl"], kl_error=ce["kl_err"],
        recovered_zero=recovered(ce["zero"], ce["spl"], ce["orig"]), recovered_mean=recovered(ce["mean"], ce["spl"], ce["orig"]),
        recovered_zero_error=recovered(ce["zero"], ce["err"], ce["orig"]),
        recovered_mean_error=recovered(ce["mean"], ce["err"], ce["orig"]),
        reconstruction=meter.result())
