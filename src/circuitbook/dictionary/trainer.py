"""Train a dictionary on a model's activations: a small torch trainer written for this package.

Why not a library: SAELens 6 cannot train transcoders (its transcoder classes are inference-only; its
issue #182 is open) and EleutherAI sparsify's trainer needs CUDA (and distributed setup). This trainer runs
on CPU or CUDA with the same code, about 300 lines, and is resumable.

Recipe (Gao et al. 2024 "Scaling and evaluating sparse autoencoders"; sparsify's defaults):
  * inputs and targets are scaled to mean squared norm d (``s_in``, ``s_out`` measured on the first block)
    and the scales are folded back into the weights at the end (:meth:`Dictionary.fold_scales`);
  * decoder rows unit-norm: the gradient's component along each row is removed before the step and the
    rows are renormalised after it; an SAE's encoder initialised to the decoder's transpose (a transcoder's
    independently: it reads another space than it writes), b_dec to the mean target;
  * loss = FVU of the batch (sum of squared errors / total variance) + ``aux_k_coeff`` * AuxK (the top
    ``aux_k`` *dead* features' pre-activations reconstruct the residual error, scaled by min(1, n_dead /
    aux_k)) + ``l1_coeff`` * mean L1 of the activations for ReLU dictionaries;
  * Adam (betas 0.9, 0.999), learning rate warm-up then a linear decay over the last ``lr_decay`` of steps;
  * TopK runs sparse: dense encoder matmul (no graph), gather the k winners with a custom backward that
    index-adds into W_enc's columns, ``embedding_bag`` decode; no [batch, d_sae] gradient ever exists.

Resuming: a checkpoint (written atomically every ``checkpoint_every`` steps) holds the parameters, Adam's
state, the step, the stream position (:class:`activations.Position`), the per-feature "tokens since last
fired" counters and the scales; the shuffle and the corpus order are deterministic, so a run killed at any
point (SIGKILL included) and restarted with the same arguments reaches bit-for-bit the same dictionary.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .activations import BlockStream, Position
from .config import DictionaryConfig, DictionaryError, TrainConfig
from .model import Dictionary

CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class TrainResult:
    """A trained dictionary (raw activation space) and what happened: steps, tokens, seconds (this process),
    tokens/s, the last steps' mean FVU and L0, the dead fraction at the end, and whether it resumed."""

    dictionary: Dictionary
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    fvu: float
    l0: float
    dead_fraction: float
    resumed_from: int
    history: list[dict]

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("dictionary")
        d.pop("history")
        return d


def default_lr(d_sae: int) -> float:
    return 2e-4 / math.sqrt(d_sae / 2 ** 14)


def lr_at(step: int, total: int, base: float, warmup: int, decay: float) -> float:
    f = min(1.0, (step + 1) / max(1, warmup))
    start = int(total * (1 - decay))
    if decay > 0 and step >= start:
        f *= max(0.0, (total - step) / max(1, total - start))
    return base * f


class _State:
    """Everything a checkpoint holds, besides the dictionary and the optimiser."""

    def __init__(self, d_sae: int):
        self.step = 0
        self.position = Position()
        self.since_fired = torch.zeros(d_sae, dtype=torch.long)
        self.s_in = self.s_out = None
        self.mass = torch.zeros(d_sae, dtype=torch.float64)  # activation mass since the last resample
        self.history: list[dict] = []
        self.recent: list[dict] = []  # the last 20 steps' logs (the result's FVU / L0): checkpointed too


def _save(path: Path, d: Dictionary, opt, st: _State, dcfg, tcfg, identity) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"version": CHECKPOINT_VERSION, "dict_cfg": dcfg.to_dict(), "train_cfg": tcfg.to_dict(),
                "identity": identity, "params": d.state_dict(), "optim": opt.state_dict(), "step": st.step,
                "position": dataclasses.asdict(st.position), "since_fired": st.since_fired, "s_in": st.s_in,
                "s_out": st.s_out, "history": st.history, "mass": st.mass, "recent": st.recent}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def _load(path: Path, d: Dictionary, opt, st: _State, dcfg, tcfg, identity) -> bool:
    if not path.exists():
        return False
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DictionaryError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to start over") from None
    if ck.get("version") != CHECKPOINT_VERSION:
        raise DictionaryError(f"checkpoint {path} has version {ck.get('version')}, expected {CHECKPOINT_VERSION}")
    for what, have, want in (("dictionary settings", ck["dict_cfg"], dcfg.to_dict()),
                             ("training settings", TrainConfig.from_dict(ck["train_cfg"]).to_dict(), tcfg.to_dict()),
                             ("model/corpus", ck["identity"], identity)):
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise DictionaryError(f"checkpoint {path} was made with other {what} ({', '.join(diff)} differ); "
                                  f"delete it or use the same arguments")
    d.load_state_dict(ck["params"])
    opt.load_state_dict(ck["optim"])
    st.step, st.position = ck["step"], Position(**ck["position"])
    st.since_fired, st.s_in, st.s_out, st.history = ck["since_fired"], ck["s_in"], ck["s_out"], ck["history"]
    st.mass = ck.get("mass", st.mass)
    st.recent = list(ck.get("recent", []))
    return True


def _scales(stream: BlockStream, dcfg: DictionaryConfig) -> tuple[float, float, torch.Tensor]:
    """s_in, s_out (so that E||s x||^2 = d) and the mean scaled target, from the first block."""
    _, _, x, y = next(stream.blocks(Position()))
    x, y = x.float(), y.float()
    s_in = math.sqrt(dcfg.d_in / float(x.pow(2).sum(-1).mean().clamp_min(1e-12)))
    s_out = math.sqrt(dcfg.d_out / float(y.pow(2).sum(-1).mean().clamp_min(1e-12)))
    return s_in, s_out, (y * s_out).mean(0)


def train_step(d: Dictionary, x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, dead: torch.Tensor,
               pre_dtype: torch.dtype) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Loss (to backprop), logged numbers, and the bool [d_sae] of features that fired in this batch."""
    cfg = d.cfg
    total_var = (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
    n_dead = int(dead.sum())
    aux_k = min(tcfg.aux_k or cfg.d_out // 2, n_dead)
    if cfg.activation == "topk":
        vals, idx, aux = d.topk_codes(x, pre_dtype, dead if aux_k else None, aux_k)
        y_hat = d.decode_sparse(vals, idx, x)
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[idx[vals > 0]] = True
        l0 = float((vals > 0).sum(-1).float().mean())
        l1 = None
        mass = torch.zeros(cfg.d_sae, dtype=torch.float64, device=x.device).index_add_(
            0, idx.reshape(-1), vals.detach().reshape(-1).double())
    elif cfg.activation == "relu":
        pre = (x.to(pre_dtype) @ d.W_enc.to(pre_dtype)).float() + d.b_enc
        f = pre.relu()
        y_hat = d.decode(f, x)
        fired = (f > 0).any(0)
        l0 = float((f > 0).sum(-1).float().mean())
        l1 = f.sum(-1).mean()
        mass = f.detach().sum(0).double()
        aux = None
        if aux_k:
            av, ai = pre.detach().masked_fill(~dead, -math.inf).topk(aux_k, dim=-1, sorted=False)
            aux = (pre.gather(-1, ai).relu(), ai)
    else:
        raise DictionaryError("training supports topk and relu dictionaries (jumprelu ones are loaded, not trained)")
    e = y - y_hat
    fvu = e.pow(2).sum() / total_var
    loss = fvu
    auxk = 0.0
    if aux is not None:
        e_hat = d.decode_sparse(aux[0], aux[1], bias=False)
        auxk_t = min(1.0, n_dead / max(1, tcfg.aux_k or cfg.d_out // 2)) * (e_hat - e.detach()).pow(2).sum() / total_var
        loss = loss + tcfg.aux_k_coeff * auxk_t
        auxk = float(auxk_t.detach())
    if l1 is not None:
        loss = loss + tcfg.l1_coeff * l1
    return loss, {"fvu": float(fvu.detach()), "l0": l0, "auxk": auxk, "loss": float(loss.detach())}, fired, mass


RESAMPLE_ENC_SCALE = 0.2
"""A resampled feature's encoder norm, as a fraction of the alive features' mean (Anthropic's recipe): new
features start quiet, so a resampling step does not flood TopK with untrained features."""


@torch.no_grad()
def resample(d: Dictionary, opt, x: torch.Tensor, y: torch.Tensor, mass: torch.Tensor, seed: int, step: int) -> int:
    """Re-initialise the features whose activation ``mass`` is below 1% of the largest towards the worst-
    reconstructed rows of (x, y) (see TrainConfig.resample_every): the decoder row is the row's unit error,
    the encoder reads the row's centred input (``RESAMPLE_ENC_SCALE`` x the alive encoders' mean norm) with the
    bias that silences it on the batch's mean input; returns how many were resampled."""
    low = (mass < 0.01 * mass.max()).nonzero().flatten()
    if len(low) == 0:
        return 0
    err = y - d(x)
    w = err.pow(2).sum(-1).double()
    w = w.pow(2) / w.pow(2).sum().clamp_min(1e-30)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    distinct = len(low) <= int((w > 0).sum())  # distinct rows where there are enough: copies would fire together
    rows = torch.multinomial(w.cpu(), len(low), replacement=not distinct, generator=g).to(x.device)
    alive = mass >= 0.01 * mass.max()
    enc_norm = d.W_enc[:, alive].norm(dim=0).mean() * RESAMPLE_ENC_SCALE
    mean_x = x.mean(0)
    e, xs = err[rows], x[rows] - mean_x  # centred: the MLP input's shared direction would make them fire everywhere
    d.W_dec[low] = e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w_new = (xs / xs.norm(dim=1, keepdim=True).clamp_min(1e-12)).T * enc_norm
    d.W_enc[:, low] = w_new.to(d.W_enc.dtype)
    d.b_enc[low] = -(mean_x @ w_new).to(d.b_enc.dtype)  # silent on the mean input, as before they were resampled
    for p, sl in ((d.W_dec, (low,)), (d.W_enc, (slice(None), low)), (d.b_enc, (low,))):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
    return len(low)


def train(model, stories, dcfg: DictionaryConfig, tcfg: TrainConfig, checkpoint: str | Path | None = None,
          identity: dict | None = None, progress: bool = True,
          on_checkpoint: Callable[[int], None] | None = None) -> TrainResult:
    """Train a dictionary of ``dcfg`` on ``model``'s layer ``dcfg.layer`` over ``stories`` (a list of story
    strings or a callable returning an iterable of them). With ``checkpoint`` (a file path) the run saves
    there and resumes from it. ``identity`` (e.g. model fingerprint and corpus hash) must match to resume."""
    if dcfg.d_in != model.cfg.d_model or dcfg.d_out != model.cfg.d_model:
        raise DictionaryError(f"dictionary d_in/d_out {dcfg.d_in}/{dcfg.d_out} do not match the model's d_model "
                              f"{model.cfg.d_model}")
    if not 0 <= dcfg.layer < model.cfg.n_layers:
        raise DictionaryError(f"layer {dcfg.layer}: the model has {model.cfg.n_layers} layer(s)")
    if dcfg.activation == "jumprelu":
        raise DictionaryError("training supports --k (TopK) and --l1 (ReLU + L1); JumpReLU dictionaries are loaded")
    device = model.weights.device
    pre_dtype = torch.bfloat16 if tcfg.dtype == "bf16" else torch.float32
    identity = dict(identity or {})
    torch.manual_seed(tcfg.seed)
    g = torch.Generator().manual_seed(tcfg.seed)
    d = Dictionary(dcfg)
    d.init_weights(g)
    d.to(device)
    lr = tcfg.lr or default_lr(dcfg.d_sae)
    opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    st = _State(dcfg.d_sae)
    stream = BlockStream(model, dcfg.layer, dcfg.kind, stories, tcfg.batch_size, tcfg.buffer_batches,
                         tcfg.seq_batch, tcfg.max_len, tcfg.seed, pre_dtype)
    path = Path(checkpoint) if checkpoint else None
    resumed = path is not None and _load(path, d, opt, st, dcfg, tcfg, identity)
    if not resumed:
        st.s_in, st.s_out, mean_y = _scales(stream, dcfg)
        with torch.no_grad():
            d.b_dec.copy_(mean_y.to(device))
    st.since_fired = st.since_fired.to(device)
    total = tcfg.tokens // tcfg.batch_size
    start_step = st.step
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=st.step, desc=f"train {dcfg.kind}", unit="step", disable=not progress)
    try:
        for pos, x, y in (stream.steps(st.position) if st.step < total else ()):
            x, y = x.to(device) * st.s_in, y.to(device) * st.s_out
            for group in opt.param_groups:
                group["lr"] = lr_at(st.step, total, lr, tcfg.warmup_steps, tcfg.lr_decay)
            dead = st.since_fired > tcfg.dead_tokens
            loss, logs, fired, mass = train_step(d, x, y, tcfg, dead, pre_dtype)
            st.mass += mass.cpu()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            d.remove_parallel_grad()
            opt.step()
            d.normalize_decoder()
            st.since_fired += len(x)
            st.since_fired[fired] = 0
            st.step += 1
            st.position = pos
            if tcfg.resample_every and st.step % tcfg.resample_every == 0 and st.step <= total // 2:
                logs["resampled"] = resample(d, opt, x, y, st.mass.to(x.device), tcfg.seed, st.step)
                st.mass.zero_()
            st.recent = (st.recent + [logs])[-20:]
            if st.step % 10 == 0 or st.step == total:
                st.history.append({"step": st.step, **logs, "dead": float(dead.float().mean())})
                bar.set_postfix(loss=f"{logs['loss']:.3f}", fvu=f"{logs['fvu']:.3f}", L0=f"{logs['l0']:.1f}",
                                dead=f"{float(dead.float().mean()):.2f}")
            bar.update(1)
            if path is not None and (st.step % tcfg.checkpoint_every == 0 or st.step == total):
                _save(path, d, opt, st, dcfg, tcfg, identity)
                if on_checkpoint is not None:
                    on_checkpoint(st.step)
            if st.step >= total:
                break
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    out = Dictionary(dcfg)
    out.load_state_dict(d.state_dict())
    out.fold_scales(st.s_in, st.s_out)
    done = st.step - start_step
    last = st.recent or st.history[-1:] or [{"fvu": math.nan, "l0": math.nan}]
    return TrainResult(
        dictionary=out.cpu(), steps=st.step, tokens=st.step * tcfg.batch_size, seconds=seconds,
        tokens_per_s=done * tcfg.batch_size / seconds if seconds > 0 else 0.0,
        fvu=sum(r["fvu"] for r in last) / len(last), l0=sum(r["l0"] for r in last) / len(last),
        dead_fraction=float((st.since_fired > tcfg.dead_tokens).float().mean()), resumed_from=start_step if resumed else 0,
        history=st.history)
