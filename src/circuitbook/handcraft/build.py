"""Spec -> weight matrices in the model's own basis, spliced into a copy of the model.

Everything is fitted against what the component really reads and writes, through the norms:

* Readers (a neuron's W_in column, a head's W_Q/W_K/W_V) are fitted on a *calibration* sample: the
  actual LN2 / LN1 outputs at real corpus positions (:func:`calibrate`). A token-set reader is the
  mean difference (optionally whitened by the activation covariance, "lda") between positions whose
  current token is in the set and all other positions; set tokens never seen in the sample use
  LN(W_E[t] + the average non-token part of the residual). Head features (position, class, constant)
  are ridge regressions from the LN1 output onto the wanted feature.
* Writers (a neuron's W_out row, a head's W_O) aim at logits through the final norm:
  U_eff = diag(lnf_w) @ W_U / s_f, with s_f the mean ln_final scale on the sample and rows centred
  (LayerNorm removes the mean anyway). A write v changes logits by about v @ U_eff.
* The bigram direct path re-fits each embedding row so that LN_f(W_E[a]) @ W_U + lnf_b @ W_U equals
  log P(.|a) up to a constant, by least squares through the pseudo-inverse of the unembedding; when the
  unembedding leaves a null direction, it pads the norm exactly (LayerNorm fixes the norm), so with
  enough d_model the fit is exact.

Order of building (each step calibrates on the model as edited so far): direct path, heads,
``attention: replace`` ablation, neurons, ``mlp: replace`` ablation.

Dictionary features (``dictionaries={name: FeatureDictionary}``, :mod:`.features`): a direction
``{feature: ...}`` is the feature's W_enc column (input; the unit must sit in the dictionary's layer, and an
SAE's encoder, which reads the MLP's output, is refused) or W_dec row (output). An entry that ``replaces`` a
feature is fitted like a neuron of the dictionary's layer (same calibration, same readers and writers), but
is not put into the MLP: ``Built.features`` splices the dictionary in place of that layer's MLP with the
feature set to 0 and the unit's write ``act_fn(x @ w_in + b_in) * w_out`` added, the error term kept or
dropped as ``spec.dictionary_error`` says. Such a layer takes no other neuron entries, and ``mlp: replace``
does not mix with replaced features (the error term would carry the ablated MLP).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from ..model import Model, Weights, run
from ..model.maths import centre, norm
from ..progress import progress as progress_bar
from .features import FeatureDictionary, FeatureSplice, ReplacedFeatures, feature_means
from .spec import ClassMap, Direction, FeatureRef, HeadSpec, NeuronSpec, OutputRule, Spec, SpecError, TokenSet
from .splice import (SpliceError, UnitMeans, ablate_heads, ablate_neurons, add_neurons, replace_head, replace_neuron,
                     unit_means)


# --------------------------------------------------------------------------- token sets and classes
def token_classes_from_book(book) -> dict[str, list[int]]:
    """The book's token classes (from the typing stage), as {class name: [token ids]}; {} if none yet."""
    from ..book import roles as typing_book

    return typing_book.class_tokens(book)


def resolve_tokens(ts: TokenSet, tokenizer, classes: dict[str, list[int]], d_vocab: int,
                   spec_classes: dict[str, TokenSet] | None = None) -> Tensor:
    """A TokenSet -> sorted unique token ids [k] (int64). Words count with and without a leading space,
    single-token spellings only; raises SpecError (naming the spec line) when nothing resolves."""
    spec_classes = spec_classes or {}
    if ts.cls is not None:
        if ts.cls in spec_classes:
            return resolve_tokens(spec_classes[ts.cls], tokenizer, classes, d_vocab)
        if ts.cls not in classes:
            known = sorted(set(classes) | set(spec_classes))
            hint = ", ".join(known) or "none: define classes in the spec or give the book token classes"
            raise SpecError(f"{ts.where}: unknown class {ts.cls!r} (known: {hint})")
        ids = list(classes[ts.cls])
    elif ts.ids is not None:
        ids = list(ts.ids)
    else:
        if tokenizer is None:
            raise SpecError(f"{ts.where}: words need the model's tokenizer")
        ids = []
        for word in ts.words:
            for form in (word, " " + word.lstrip()):
                enc = tokenizer.encode(form)
                if len(enc) == 1 and tokenizer.decode(enc).strip() == word.strip():
                    ids.append(enc[0])
    bad = [i for i in ids if not 0 <= i < d_vocab]
    if bad:
        raise SpecError(f"{ts.where}: token id {bad[0]} is outside the vocabulary (size {d_vocab})")
    if not ids:
        raise SpecError(f"{ts.where}: {ts.describe()} resolves to no single token of this tokenizer")
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


# --------------------------------------------------------------------------- calibration
@dataclasses.dataclass
class Calibration:
    """What the components read, sampled at real corpus positions (flattened, corpus order).

    tokens [N], pos [N] int64: the current token and its position. x_attn[l], x_mlp[l] [N, d_model]:
    the LN1 / LN2 outputs at layer l (exactly what W_Q/W_K/W_V and W_in multiply). ctx_attn[l],
    ctx_mlp[l] [d_model]: mean of (residual - W_E[token]), used to place unseen tokens.
    final_scale: mean ln_final scale (the final norm divides every write by about this).
    """

    tokens: Tensor
    pos: Tensor
    x_attn: dict[int, Tensor]
    x_mlp: dict[int, Tensor]
    ctx_attn: dict[int, Tensor]
    ctx_mlp: dict[int, Tensor]
    final_scale: float


def calibrate(weights: Weights, batches: Iterable, max_tokens: int = 16384) -> Calibration:
    """Collect a :class:`Calibration` from up to ``max_tokens`` real positions of ``batches``."""
    cfg = weights.cfg
    L = cfg.n_layers
    taps = [f"blocks.{l}.{h}" for l in range(L) for h in ("hook_resid_pre", "hook_resid_mid")]
    taps.append("ln_final.hook_scale")
    got: dict[str, list[Tensor]] = {t: [] for t in taps}
    toks, poss, n = [], [], 0
    for b in batches:
        t, m = b.tokens.to(weights.device), b.mask.to(weights.device)
        out = run(weights, t, taps)
        for k in taps:
            got[k].append(out[k][m].float())
        toks.append(t[m])
        poss.append(torch.arange(t.shape[1], device=t.device).expand_as(t)[m])
        n += int(m.sum())
        if n >= max_tokens:
            break
    if n == 0:
        raise SpecError("the calibration corpus gave no tokens")
    tokens, pos = torch.cat(toks)[:max_tokens], torch.cat(poss)[:max_tokens]
    cat = {k: torch.cat(v)[:max_tokens] for k, v in got.items()}
    emb = weights.W_E[tokens].float()
    x_attn, x_mlp, ctx_attn, ctx_mlp = {}, {}, {}, {}
    for l in range(L):
        pre, mid = cat[f"blocks.{l}.hook_resid_pre"], cat[f"blocks.{l}.hook_resid_mid"]
        x_attn[l] = norm(pre, weights.ln1_w[l].float(), weights.ln1_b[l].float(), cfg.norm, cfg.eps)
        x_mlp[l] = norm(mid, weights.ln2_w[l].float(), weights.ln2_b[l].float(), cfg.norm, cfg.eps)
        ctx_attn[l], ctx_mlp[l] = (pre - emb).mean(0), (mid - emb).mean(0)
    return Calibration(tokens, pos, x_attn, x_mlp, ctx_attn, ctx_mlp,
                       float(cat["ln_final.hook_scale"].mean()))


# --------------------------------------------------------------------------- readers and writers
def _ridge(X: Tensor, T: Tensor, weight: Tensor | None = None, lam: float = 1e-3) -> Tensor:
    """argmin_W sum_n weight_n |X_n W - T_n|^2 + lam * tr(X^T X)/d * |W|^2.  X [N, d], T [N, k] -> [d, k]."""
    X, T = X.double(), T.double()
    Xw = X * weight.double()[:, None] if weight is not None else X
    G = Xw.T @ X
    G += torch.eye(G.shape[0], dtype=G.dtype, device=G.device) * (lam * G.diagonal().mean().clamp_min(1e-12))
    return torch.linalg.solve(G, Xw.T @ T).float()


def _set_means(X: Tensor, tokens: Tensor, ids: Tensor, fallback) -> Tensor:
    """Mean of X over the positions of each token in ``ids`` [k] -> [k, d]; unseen tokens: fallback(ids)."""
    lookup = torch.full((int(max(tokens.max(), ids.max())) + 1,), -1, dtype=torch.long, device=X.device)
    lookup[ids] = torch.arange(len(ids), device=X.device)
    slot = lookup[tokens]
    hit = slot >= 0
    sums = torch.zeros(len(ids), X.shape[1], dtype=torch.float64, device=X.device)
    cnt = torch.zeros(len(ids), dtype=torch.float64, device=X.device)
    sums.index_add_(0, slot[hit], X[hit].double())
    cnt.index_add_(0, slot[hit], torch.ones(int(hit.sum()), dtype=torch.float64, device=X.device))
    means = (sums / cnt.clamp_min(1)[:, None]).float()
    if (cnt == 0).any():
        means[cnt == 0] = fallback(ids[cnt == 0])
    return means


def fit_token_reader(X: Tensor, tokens: Tensor, ids: Tensor, fallback, fit: str = "ridge",
                     ridge: float = 0.01) -> tuple[Tensor, float, float]:
    """A direction w [d] that separates positions whose token is in ``ids`` from the rest.

    Returns (w, on, off): the average projection of set tokens (each set token weighted equally) and of
    all other positions. "mean": w = mu_on - mu_off; "lda": w = (Cov + ridge)^-1 (mu_on - mu_off);
    "ridge": ridge regression of the in-set indicator on X, classes balanced (``on`` is then the mean over
    set positions, frequent set tokens weighing more)."""
    inset = torch.isin(tokens, ids)
    mu_on = _set_means(X, tokens, ids, fallback).mean(0)
    mu_off = X[~inset].mean(0) if (~inset).any() else X.mean(0)
    diff = mu_on - mu_off
    if fit == "ridge" and inset.any():
        # least squares onto the indicator, on and off positions weighted equally: directly penalises
        # off-set positions that would fire, which the mean difference ignores
        w = _ridge(X, inset.float()[:, None], _balanced(inset), lam=ridge)[:, 0]
        on = float(X[inset].mean(0) @ w)
        off = float(mu_off @ w)
        if on - off <= 1e-12:
            raise SpecError("the token set is indistinguishable from the other tokens at this point of the model")
        return w, on, off
    if fit == "lda":
        Xc = (X - X.mean(0)).double()
        C = Xc.T @ Xc / len(X)
        C += torch.eye(len(C), dtype=C.dtype, device=C.device) * 0.1 * C.diagonal().mean()
        w = torch.linalg.solve(C, diff.double()).float()
    else:
        w = diff.clone()
    on, off = float(mu_on @ w), float(mu_off @ w)
    if on - off <= 1e-12:
        raise SpecError("the token set is indistinguishable from the other tokens at this point of the model")
    return w, on, off


class _Unembed:
    """Logit effect of a write to the residual stream: delta_logits ~= v @ U [V] (U [d_model, V])."""

    def __init__(self, weights: Weights, final_scale: float):
        U = weights.W_U.float() * weights.lnf_w.float()[:, None] / final_scale
        if weights.cfg.norm == "LN":
            U = U - U.mean(0, keepdim=True)
        self.U = U
        self._pinv = None

    def pinv(self, y: Tensor) -> Tensor:
        """Least-squares v with v @ U ~= y (y [V], centred)."""
        if self._pinv is None:
            A, S, Bt = torch.linalg.svd(self.U.double(), full_matrices=False)
            keep = S > S.max() * 1e-6
            self._pinv = (A[:, keep], S[keep], Bt[keep])
        A, S, Bt = self._pinv
        return (A @ ((Bt @ y.double()) / S)).float()

    def gain_of(self, v: Tensor, promote: Tensor | None, suppress: Tensor | None) -> float:
        delta = v @ self.U
        base = delta.mean()
        g = 0.0
        if promote is not None:
            g += float(delta[promote].mean() - base)
        if suppress is not None:
            g -= float(delta[suppress].mean() - base)
        return g


def _direction(d: Direction, weights: Weights, ctx: "_Ctx", layer: int, side: str) -> Tensor:
    n = weights.cfg.d_model
    original = ctx.original
    if d.feature is not None:
        fd, i = ctx.feature(d.feature)
        if side == "out":
            v = fd.W_dec[i]
        elif fd.reads_output:
            raise SpecError(f"{d.where}: {fd.describe()} is an SAE: its encoder reads the MLP's output, not what "
                            f"a neuron reads (use its decoder row as an output direction)")
        elif fd.layer != layer:
            raise SpecError(f"{d.where}: {d.feature.describe()} reads layer {fd.layer}'s MLP input, but this unit "
                            f"is in layer {layer}")
        else:
            v = fd.W_enc[:, i]
    elif d.neuron is not None:
        if not 0 <= d.neuron < original.cfg.d_mlp:
            raise SpecError(f"{d.where}: neuron {d.neuron} does not exist (d_mlp = {original.cfg.d_mlp})")
        v = original.W_in[layer, :, d.neuron] if side == "in" else original.W_out[layer, d.neuron]
    elif d.values is not None:
        v = torch.tensor(d.values, dtype=torch.float32)
    else:
        p = Path(d.file)
        if not p.is_file():
            raise SpecError(f"{d.where}: direction file {p} does not exist")
        v = torch.as_tensor(np.load(p)) if p.suffix == ".npy" else torch.load(p, map_location="cpu", weights_only=True)
        v = v.float().flatten()
    if v.shape != (n,):
        raise SpecError(f"{d.where}: a direction must have d_model = {n} values, got {tuple(v.shape)}")
    return v.to(weights.W_E)


@dataclasses.dataclass
class _Ctx:
    """Everything the builders share."""

    model: Model
    original: Weights
    classes: dict[str, list[int]]
    spec: Spec
    dictionaries: dict[str, FeatureDictionary] = dataclasses.field(default_factory=dict)

    def ids(self, ts: TokenSet) -> Tensor:
        return resolve_tokens(ts, self.model.tokenizer, self.classes, self.original.cfg.d_vocab, self.spec.classes)

    def feature(self, ref: FeatureRef) -> tuple[FeatureDictionary, int]:
        """(the dictionary, the feature index) ``ref`` names; SpecError naming the spec line otherwise."""
        fd = self.dictionaries.get(ref.dictionary)
        if fd is None:
            have = ", ".join(map(repr, self.dictionaries)) or "none"
            raise SpecError(f"{ref.where}: no dictionary {ref.dictionary!r} was given (given: {have})")
        try:
            fd.check(self.original.cfg)
            return fd, fd.check_index(ref.idx)
        except SpliceError as e:
            raise SpecError(f"{ref.where}: {e}") from None


@dataclasses.dataclass
class _Replaced:
    """What the unit a spec entry replaces reads and writes (a neuron, or a dictionary feature)."""

    what: str
    w_in: Tensor
    b_in: float
    w_out: Tensor
    w_gate: Tensor | None
    reads_input: bool = True  # False: an SAE feature (its encoder reads the MLP's output)


def _replaced(ns: NeuronSpec, ctx: _Ctx) -> _Replaced | None:
    r, o, l = ns.replaces, ctx.original, ns.layer
    if r is None:
        return None
    if isinstance(r, FeatureRef):
        fd, i = ctx.feature(r)
        return _Replaced(r.describe(), fd.W_enc[:, i], float(fd.b_enc[i]), fd.W_dec[i], None, not fd.reads_output)
    if r >= o.cfg.d_mlp:
        raise SpecError(f"{ns.where}: replaces neuron {r}, but layer {l} has {o.cfg.d_mlp}")
    return _Replaced(f"neuron {r}", o.W_in[l, :, r], float(o.b_in[l, r]), o.W_out[l, r],
                     o.W_gate[l, :, r] if o.W_gate is not None else None)


def _write_vector(ctx: _Ctx, rule: OutputRule, un: _Unembed, gain: float, fit: str, weights: Weights,
                  layer: int) -> Tensor:
    if rule.direction is not None:
        return _direction(rule.direction, weights, ctx, layer, "out") * gain
    P = ctx.ids(rule.promote).to(un.U.device) if rule.promote is not None else None
    Q = ctx.ids(rule.suppress).to(un.U.device) if rule.suppress is not None else None
    if fit == "pinv":
        y = torch.zeros(un.U.shape[1], device=un.U.device)
        if P is not None:
            y[P] += 1.0
        if Q is not None:
            y[Q] -= 1.0
        v = un.pinv(y - y.mean())
    else:
        mean = un.U.mean(1)
        v = torch.zeros_like(mean)
        if P is not None:
            v += un.U[:, P].mean(1) - mean
        if Q is not None:
            v -= un.U[:, Q].mean(1) - mean
    g = un.gain_of(v, P, Q)
    if g <= 1e-12:
        raise SpecError(f"{rule.where}: this output cannot move those logits (the unembedding gives no gain)")
    v = v * (gain / g)
    return centre(v, weights.cfg.norm)


# --------------------------------------------------------------------------- neurons
@dataclasses.dataclass
class NeuronWeights:
    """A built neuron: reads w_in [d_model] with bias b_in, writes w_out [d_model]; w_gate for gated MLPs."""

    name: str
    layer: int
    w_in: Tensor
    b_in: float
    w_out: Tensor
    w_gate: Tensor | None = None


def _bias(ns: NeuronSpec, ctx: _Ctx, rep: _Replaced | None) -> float:
    """b_in for a direction input: the number given, or for "keep" the input feature's b_enc (a feature
    direction) or the replaced unit's bias."""
    if ns.bias != "keep":
        return float(ns.bias)
    if isinstance(ns.input, Direction) and ns.input.feature is not None:
        fd, i = ctx.feature(ns.input.feature)
        return float(fd.b_enc[i])
    return rep.b_in


def _keep_strength(ns: NeuronSpec, rep: _Replaced, cal: Calibration, ids: Tensor) -> float:
    """The replaced unit's own on-set minus off-set pre-activation gap on the calibration sample."""
    if not rep.reads_input:
        raise SpecError(f"{ns.where}: strength: keep, but {rep.what} reads the MLP's output (an SAE feature)")
    inset = torch.isin(cal.tokens, ids)
    pre = cal.x_mlp[ns.layer] @ rep.w_in.float().to(cal.x_mlp[ns.layer].device)
    strength = float(pre[inset].mean() - pre[~inset].mean()) if inset.any() and (~inset).any() else 0.0
    if strength <= 0:
        raise SpecError(f"{ns.where}: strength: keep, but {rep.what} does not fire more on the set")
    return strength


def build_neuron(ns: NeuronSpec, ctx: _Ctx, weights: Weights, cal: Calibration) -> NeuronWeights:
    cfg = weights.cfg
    l = ns.layer
    if l is None or not 0 <= l < cfg.n_layers:
        raise SpecError(f"{ns.where}: layer {l} does not exist (the model has {cfg.n_layers})")
    rep = _replaced(ns, ctx)
    if isinstance(ns.input, Direction):
        w_in = _direction(ns.input, weights, ctx, l, "in") * (1.0 if ns.strength is None else ns.strength)
        b_in = _bias(ns, ctx, rep)
    else:
        ids = ctx.ids(ns.input).to(cal.tokens.device)

        def fallback(t):
            return norm(weights.W_E[t].float() + cal.ctx_mlp[l], weights.ln2_w[l].float(), weights.ln2_b[l].float(),
                       cfg.norm, cfg.eps)

        try:
            w, on, off = fit_token_reader(cal.x_mlp[l], cal.tokens, ids, fallback, ns.fit)
        except SpecError as e:
            raise SpecError(f"{ns.input.where}: {e}") from None
        strength = 4.0 if ns.strength is None else ns.strength
        if strength == "keep":
            strength = _keep_strength(ns, rep, cal, ids)
        scale = strength / (on - off)
        w_in = w * scale
        b_in = rep.b_in if ns.bias == "keep" else float(ns.bias) - off * scale
    un = _Unembed(weights, cal.final_scale)
    gain = 1.0 if ns.gain is None else ns.gain
    if gain == "keep":  # the replaced unit's own logit gain on the promoted / suppressed sets
        rule = ns.output
        if rule.direction is not None:
            raise SpecError(f"{ns.where}: gain: keep needs a promote/suppress output")
        P = ctx.ids(rule.promote).to(un.U.device) if rule.promote is not None else None
        Q = ctx.ids(rule.suppress).to(un.U.device) if rule.suppress is not None else None
        gain = un.gain_of(rep.w_out.float().to(un.U.device), P, Q)
        if gain <= 0:
            raise SpecError(f"{ns.where}: gain: keep, but {rep.what} does not promote that output")
    w_out = _write_vector(ctx, ns.output, un, gain, ns.out_fit, weights, l)
    w_gate = None
    if weights.W_gate is not None and not isinstance(ns.replaces, FeatureRef):
        # gated MLP: keep the gate open with the replaced neuron's gate, else W_in (a unit in place of a
        # feature is not in the MLP and has no gate)
        w_gate = rep.w_gate if rep is not None else w_in
    return NeuronWeights(ns.name, l, w_in.to(weights.W_in), b_in, w_out.to(weights.W_out), w_gate)


# --------------------------------------------------------------------------- heads
def _position_features(pos: Tensor, d_head: int, n_ctx: int) -> Tensor:
    """[N, d_head] cos/sin of geometric frequencies from pi down to pi/n_ctx, unit norm per row: the
    dot product of two rows peaks sharply when positions are equal and has no alias within n_ctx."""
    nf = d_head // 2
    freqs = math.pi * (1.0 / n_ctx) ** (torch.arange(nf, dtype=torch.float64) / max(nf - 1, 1))
    ang = pos.double()[:, None] * freqs[None].to(pos.device)
    f = torch.cat([ang.cos(), ang.sin()], 1) / math.sqrt(nf)
    if f.shape[1] < d_head:
        f = torch.cat([f, torch.zeros(len(pos), d_head - f.shape[1], dtype=f.dtype, device=f.device)], 1)
    return f.float()


def _balanced(mask: Tensor) -> Tensor:
    """Weights giving the positives and negatives of ``mask`` equal total weight."""
    n_on = int(mask.sum())
    n_off = len(mask) - n_on
    if n_on == 0 or n_off == 0:
        return torch.ones(len(mask), device=mask.device)
    return torch.where(mask, 0.5 / n_on, 0.5 / n_off).float() * len(mask)


@dataclasses.dataclass
class HeadWeights:
    """A built head: W_Q/W_K/W_V [d_model, d_head], W_O [d_head, d_model]."""

    name: str
    layer: int
    head: int
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor


def build_head(hs: HeadSpec, ctx: _Ctx, weights: Weights, cal: Calibration) -> HeadWeights:
    cfg = weights.cfg
    l, e, d = hs.layer, cfg.d_head, cfg.d_model
    if not 0 <= l < cfg.n_layers:
        raise SpecError(f"{hs.where}: layer {l} does not exist (the model has {cfg.n_layers})")
    if not 0 <= hs.head < cfg.n_heads:
        raise SpecError(f"{hs.where}: head {hs.head} does not exist (the model has {cfg.n_heads} heads)")
    X, tok, pos = cal.x_attn[l], cal.tokens, cal.pos
    s = hs.strength * cfg.attn_scale
    W_Q = torch.zeros(d, e)
    W_K = torch.zeros(d, e)
    ones = torch.ones(len(X), 1)
    if hs.attend == "previous":
        if cfg.positional != "learned":
            raise SpecError(f"{hs.where}: 'previous' is fitted on learned position embeddings; this model is rotary")
        n_fit = int(pos.max()) + 1
        W_K = _ridge(X, _position_features(pos, e, n_fit))
        W_Q = _ridge(X, _position_features(pos - 1, e, n_fit)) * s
    elif hs.attend == "same_token":
        g = torch.Generator().manual_seed(hs.head)
        mu = X.mean(0)
        R = torch.linalg.qr(torch.cat([mu[:, None], torch.randn(d, e, generator=g)], 1)).Q[:, 1:e + 1]
        m = float(((X - mu) @ R).pow(2).sum(1).mean())
        W_K, W_Q = R, R * (s / m)
    elif hs.attend == "bos":
        W_K[:, :1] = _ridge(X, (pos == 0).float()[:, None], _balanced(pos == 0))
        W_Q[:, :1] = _ridge(X, ones) * s
    else:
        ids = ctx.ids(hs.attend)
        on = torch.isin(tok, ids)
        if not on.any():
            raise SpecError(f"{hs.attend.where}: no token of this set occurs in the calibration corpus")
        W_K[:, :1] = _ridge(X, on.float()[:, None], _balanced(on))
        W_Q[:, :1] = _ridge(X, ones) * s

    un = _Unembed(weights, cal.final_scale)
    W_V = torch.zeros(d, e)
    W_O = torch.zeros(e, d)
    if isinstance(hs.ov, list):
        if len(hs.ov) > e:
            raise SpecError(f"{hs.where}: {len(hs.ov)} class maps do not fit in d_head = {e}")
        for i, cm in enumerate(hs.ov):
            ids = ctx.ids(cm.src)
            on = torch.isin(tok, ids)
            if not on.any():
                raise SpecError(f"{cm.src.where}: no token of this set occurs in the calibration corpus")
            W_V[:, i] = _ridge(X, on.float()[:, None], _balanced(on))[:, 0]
            W_O[i] = _write_vector(ctx, cm.dst, un, hs.gain, "unembed", weights, l)
    else:  # copy: a d_head-dimensional code of the token, decoded to its own unembedding direction
        keep = torch.isin(tok, ctx.ids(hs.ov)) if isinstance(hs.ov, TokenSet) else torch.ones_like(tok, dtype=torch.bool)
        if not keep.any():
            raise SpecError(f"{hs.ov.where}: no token of this set occurs in the calibration corpus")
        Xs = X[keep]
        Xc = Xs - Xs.mean(0)
        _, _, Vt = torch.linalg.svd(Xc.double(), full_matrices=False)
        W_V = Vt[:e].T.float()
        Uc = un.U[:, tok]  # [d, N]: the unembedding column of each position's own token
        target = (Uc / Uc.pow(2).sum(0, keepdim=True).clamp_min(1e-12)).T * hs.gain  # writes raising logit tok by gain
        target[~keep] = 0
        W_O = _ridge(X @ W_V, target).to(W_O)
    return HeadWeights(hs.name, l, hs.head, W_Q, W_K, W_V, W_O)


# --------------------------------------------------------------------------- direct path
def bigram_counts(batches: Iterable, d_vocab: int) -> tuple[Tensor, Tensor]:
    """Sparse bigram counts over real positions: (pairs [M] = a * d_vocab + b, counts [M]) sorted by pair."""
    keys, cnts = [], []
    for b in batches:
        t, m = b.tokens, b.mask
        ok = m[:, 1:] & m[:, :-1]
        k = (t[:, :-1] * d_vocab + t[:, 1:])[ok]
        u, c = torch.unique(k, return_counts=True)
        keys.append(u)
        cnts.append(c)
    if not keys:
        raise SpecError("the corpus gave no bigrams")
    u, inv = torch.unique(torch.cat(keys), return_inverse=True)
    c = torch.zeros(len(u), dtype=torch.long).index_add_(0, inv, torch.cat(cnts))
    return u, c


def bigram_log_probs(pairs: Tensor, counts: Tensor, rows: Tensor, d_vocab: int, smoothing: float) -> Tensor:
    """Dense smoothed log P(b | a) [len(rows), d_vocab] for source tokens ``rows``."""
    a, b = pairs // d_vocab, pairs % d_vocab
    slot = torch.full((d_vocab,), -1, dtype=torch.long)
    slot[rows] = torch.arange(len(rows))
    sel = slot[a] >= 0
    C = torch.zeros(len(rows), d_vocab, dtype=torch.float64)
    C.index_put_((slot[a[sel]], b[sel]), counts[sel].double(), accumulate=True)
    C += smoothing
    return (C / C.sum(1, keepdim=True)).log()


def fit_bigram_embedding(weights: Weights, pairs: Tensor, counts: Tensor, smoothing: float = 0.5,
                         min_count: int = 1, chunk: int = 256, progress: bool = False) -> tuple[Tensor, Tensor]:
    """New W_E rows so that each token's embedding alone, through the final norm and W_U, predicts the
    smoothed bigram distribution. Returns (W_E' [d_vocab, d_model], fitted source token ids)."""
    cfg = weights.cfg
    V, d = cfg.d_vocab, cfg.d_model
    a = pairs // V
    src_counts = torch.zeros(V, dtype=torch.long).index_add_(0, a, counts)
    rows = torch.nonzero(src_counts >= min_count)[:, 0]
    M = (weights.lnf_w.double()[:, None] * weights.W_U.double())  # n @ M + beta = logits
    beta = weights.lnf_b.double() @ weights.W_U.double() + weights.b_U.double()
    M = M - M.mean(1, keepdim=True)  # a logit shift is free
    centred = cfg.norm == "LN"
    if centred:
        M = M - M.mean(0, keepdim=True)  # LayerNorm output has zero mean over d_model
    A, S, Bt = torch.linalg.svd(M, full_matrices=False)
    keep = S > S.max() * 1e-9
    A, S, Bt = A[:, keep], S[keep], Bt[keep]
    # slack: a (centred) direction the unembedding ignores, to set the norm LayerNorm imposes
    basis = torch.eye(d, dtype=torch.float64)
    if centred:
        basis = basis - 1.0 / d
    resid = basis - A @ (A.T @ basis)
    u, sv, _ = torch.linalg.svd(resid, full_matrices=False)
    slack = u[:, 0] if sv[0] > 1e-6 else A[:, -1]  # else the least harmful direction
    W_E = weights.W_E.clone()
    orig = centre(weights.W_E.double(), cfg.norm)
    for i in progress_bar(range(0, len(rows), chunk), desc="bigram direct path", enabled=progress):
        r = rows[i:i + chunk]
        T = bigram_log_probs(pairs, counts, r, V, smoothing) - beta[None]
        T = T - T.mean(1, keepdim=True)
        n = ((T @ Bt.T) / S) @ A.T  # [k, d]
        ms = n.pow(2).mean(1, keepdim=True)
        sl = centre(slack, cfg.norm)
        # add alpha * slack so that mean(x^2) = 1; slack is orthogonal to n when it is a null direction
        c = (n @ sl)[:, None] * 2 / d
        q = sl.pow(2).mean()
        alpha = (-c + (c.pow(2) + 4 * q * (1 - ms)).clamp_min(0).sqrt()) / (2 * q)
        x = n + alpha * sl[None]
        x = x / x.pow(2).mean(1, keepdim=True).sqrt()
        scale = orig[r].pow(2).mean(1, keepdim=True).sqrt()  # keep each row's magnitude
        W_E[r] = (x * scale).to(W_E)
    return W_E, rows


# --------------------------------------------------------------------------- the whole spec
@dataclasses.dataclass
class Built:
    """A spec built into a copy of a model.

    weights: the handcrafted model's weights. removed: (kind, layer, idx) units whose original behaviour
    is gone (replaced, or ablated by ``mlp/attention: replace``; ("embed", 0, 0) for a re-fitted direct
    path; ("feature", dictionary number, idx) for a replaced feature): the ablation baselines remove exactly
    these. replaced / added: {(kind, layer, idx): spec name}. means: the unit means used for mean ablation
    (from the original model). features: the dictionaries spliced in for replaced features (None without):
    the handcrafted model is ``weights`` run with :meth:`interventions`.
    """

    spec: Spec
    weights: Weights
    removed: list[tuple[str, int, int]]
    replaced: dict[tuple[str, int, int], str]
    added: dict[tuple[str, int, int], str]
    means: UnitMeans | None = None
    neurons: list[NeuronWeights] = dataclasses.field(default_factory=list)
    heads: list[HeadWeights] = dataclasses.field(default_factory=list)
    features: FeatureSplice | None = None

    def interventions(self) -> dict | None:
        """The forward interventions the handcrafted model runs with (None: ``weights`` alone)."""
        return self.features.handcrafted(self.weights) if self.features is not None else None

    def model(self):
        """``weights``, or (weights, interventions) when features are spliced in (what ``evaluate`` takes)."""
        return self.weights if self.features is None else (self.weights, self.interventions())


def _feature_layers(spec: Spec, ctx: _Ctx) -> list[NeuronSpec]:
    """The spec's neuron entries with every feature-replacing entry put in its dictionary's layer, checked:
    SpecError for an unknown dictionary or feature, an explicit layer that is not the dictionary's, two
    dictionaries for one layer, another neuron entry in such a layer, or ``mlp: replace``."""
    out, by_layer = [], {}
    for ns in spec.neurons:
        if not isinstance(ns.replaces, FeatureRef):
            out.append(ns)
            continue
        fd, _ = ctx.feature(ns.replaces)
        if ns.layer is not None and ns.layer != fd.layer:
            raise SpecError(f"{ns.where}: layer {ns.layer}, but {ns.replaces.describe()} stands in for layer "
                            f"{fd.layer}'s MLP")
        other = by_layer.setdefault(fd.layer, fd.name)
        if other != fd.name:
            raise SpecError(f"{ns.where}: dictionaries {other!r} and {fd.name!r} would both replace layer "
                            f"{fd.layer}'s MLP")
        out.append(dataclasses.replace(ns, layer=fd.layer))
    if by_layer and spec.mlp == "replace":
        raise SpecError(f"{spec.source}: mlp: replace does not mix with replaced dictionary features (the error "
                        f"term would carry the ablated MLP)")
    for ns in out:
        if not isinstance(ns.replaces, FeatureRef) and ns.layer in by_layer:
            raise SpecError(f"{ns.where}: layer {ns.layer}'s MLP is replaced by dictionary {by_layer[ns.layer]!r}; "
                            f"its neurons cannot be handcrafted in the same spec")
    return out


def _feature_splice(spec: Spec, ctx: _Ctx, built: list[tuple[NeuronSpec, NeuronWeights]],
                    corpus_batches) -> FeatureSplice | None:
    """The dictionaries of the feature-replacing units, those units stacked per dictionary, and the
    features' means on the original model (for the mean-ablation baseline)."""
    groups: dict[str, tuple[FeatureDictionary, list[tuple[int, NeuronWeights]]]] = {}
    for ns, nw in built:
        if isinstance(ns.replaces, FeatureRef):
            fd, i = ctx.feature(ns.replaces)
            groups.setdefault(fd.name, (fd, []))[1].append((i, nw))
    if not groups:
        return None
    parts = [ReplacedFeatures(fd, [i for i, _ in units], torch.stack([nw.w_in.float() for _, nw in units], 1),
                              torch.tensor([nw.b_in for _, nw in units], dtype=torch.float32),
                              torch.stack([nw.w_out.float() for _, nw in units]), [nw.name for _, nw in units],
                              feature_means(ctx.original, fd, corpus_batches()))
             for fd, units in groups.values()]
    return FeatureSplice(parts, spec.dictionary_error)


def build(spec: Spec, model: Model, corpus_batches, classes: dict[str, list[int]] | None = None,
          means: UnitMeans | None = None, max_calibration_tokens: int = 16384, progress: bool = False,
          dictionaries: dict[str, FeatureDictionary] | None = None) -> Built:
    """Build ``spec`` against ``model``. ``corpus_batches``: a callable returning a fresh iterable of
    :class:`circuitbook.corpus.Batch` (it is read several times: calibration, bigram counts, means).
    ``classes``: {class name: token ids} (e.g. the book's token classes or the demo's truth).
    ``dictionaries``: {name the spec uses: FeatureDictionary} for the features it names."""
    original = model.weights
    cfg = original.cfg
    ctx = _Ctx(model, original, dict(classes or {}), spec, dict(dictionaries or {}))
    for ref in spec.feature_refs():  # every dictionary and feature index, before any work
        ctx.feature(ref)
    neuron_specs = _feature_layers(spec, ctx)
    w = original.clone()
    removed: list[tuple[str, int, int]] = []
    replaced: dict = {}
    added: dict = {}
    needs_means = spec.ablate == "mean" and (spec.mlp == "replace" or spec.attention == "replace")
    if needs_means and means is None:
        means = unit_means(original, corpus_batches(), progress)

    if spec.direct.mode == "bigram":
        pairs, counts = bigram_counts(corpus_batches(), cfg.d_vocab)
        w.W_E, _ = fit_bigram_embedding(w, pairs, counts, spec.direct.smoothing, spec.direct.min_count,
                                        progress=progress)
        removed.append(("embed", 0, 0))
        replaced[("embed", 0, 0)] = "direct: bigram"

    built_heads = []
    if spec.heads:
        cal = calibrate(w, corpus_batches(), max_calibration_tokens)
        for hs in spec.heads:
            hw = build_head(hs, ctx, w, cal)
            built_heads.append(hw)
        for hw in built_heads:
            w = replace_head(w, hw.layer, hw.head, hw.W_Q, hw.W_K, hw.W_V, hw.W_O)
            removed.append(("head", hw.layer, hw.head))
            replaced[("head", hw.layer, hw.head)] = hw.name
    if spec.attention == "replace":
        for l in range(cfg.n_layers):
            drop = [h for h in range(cfg.n_heads) if ("head", l, h) not in replaced]
            w = ablate_heads(w, l, drop, spec.ablate, means)
            removed += [("head", l, h) for h in drop]

    built_neurons = []
    if neuron_specs:
        cal = calibrate(w, corpus_batches(), max_calibration_tokens)
        for ns in neuron_specs:
            built_neurons.append((ns, build_neuron(ns, ctx, w, cal)))
    features = _feature_splice(spec, ctx, built_neurons, corpus_batches)
    for ns, nw in built_neurons:
        if isinstance(ns.replaces, FeatureRef):
            fd, i = ctx.feature(ns.replaces)
            removed.append(("feature", fd.number, i))
            replaced[("feature", fd.number, i)] = nw.name
    built_neurons = [(ns, nw) for ns, nw in built_neurons if not isinstance(ns.replaces, FeatureRef)]
    n_orig = cfg.d_mlp
    for ns, nw in built_neurons:
        if ns.replaces is not None:
            w = replace_neuron(w, nw.layer, ns.replaces, nw.w_in, nw.b_in, nw.w_out, nw.w_gate)
            removed.append(("neuron", nw.layer, ns.replaces))
            replaced[("neuron", nw.layer, ns.replaces)] = nw.name
    for l in range(cfg.n_layers):
        new = [nw for ns, nw in built_neurons if ns.replaces is None and nw.layer == l]
        if new:
            w, idx = add_neurons(w, l, torch.stack([n.w_in for n in new], 1), torch.tensor([n.b_in for n in new]),
                                 torch.stack([n.w_out for n in new]),
                                 torch.stack([n.w_gate for n in new], 1) if w.W_gate is not None else None)
            for i, n in zip(idx, new):
                added[("neuron", l, i)] = n.name
    if spec.mlp == "replace":
        for l in range(cfg.n_layers):
            drop = [i for i in range(n_orig) if ("neuron", l, i) not in replaced]
            w = ablate_neurons(w, l, drop, spec.ablate, means)
            removed += [("neuron", l, i) for i in drop]
    return Built(spec, w, removed, replaced, added, means, [nw for _, nw in built_neurons], built_heads, features)
