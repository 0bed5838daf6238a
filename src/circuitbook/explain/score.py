"""Score explanations on held-out stories: simulation, detection and ablation scores.

One forward pass per scoring batch collects every unit's true activation (and, for the ablation scores,
the final residual stream at the ablation positions); everything else is computed from those arrays.

* **windows** — every held-out sequence's positions after BOS, cut into ``window``-token windows.
* **simulation score** (as OpenAI automated-interpretability's ``correlation_score`` pooled over
  "all" = top-activating + random records): Pearson correlation between the simulated and true activations
  over the tokens of the unit's ``n_top`` windows with the highest true maximum plus ``n_random`` windows
  drawn once (seeded) for every unit. A constant simulation scores 0. Heads: the same over the attention
  rows (query positions x keys <= query) of those windows, windows ranked by their strongest non-BOS
  attention.
* **detection** — balanced accuracy over those windows: a window truly fires when its true maximum exceeds
  ``mean + (t - mean) / 2`` (t: the smallest maximum among the top windows), and is predicted to fire when
  the simulation somewhere exceeds the midpoint of its baseline and its largest clause scale.
* **ablation score** — on the ablation positions (all positions of a seeded subset of sequences, at least
  ``ablation_tokens``): ``recovered(L_mean, L_sim, L_orig)`` with L_mean the loss with the unit's
  activation replaced by its held-out mean, L_sim by its simulation (BOS keeps its activation); ``carry``
  is ``L_mean - L_orig``, the loss the unit carries. For units whose activation reaches the logits only
  through one write row in the last layer (MLP neurons of the last layer) the losses are computed exactly
  from the final residual (``r + delta * w`` through the final norm and unembedding): no extra forward.
  Other units (heads, earlier layers) run forwards with interventions on the ablation sequences.

Held-out means held out: the book records which stories its scan read (meta ``scan_stories``); scoring on
any of them is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..corpus import batches, story_hashes
from ..errors import CircuitbookError
from ..handcraft.evaluate import recovered
from ..model import run
from ..units import unit_kind
from .access import ACCESS, access, mean_replacement
from .program import ActivationProgram
from .simulate import Resolver, simulate_activation, simulate_pattern


class ScoreError(CircuitbookError, ValueError):
    """Scoring cannot run as asked (stories the explanations were made from, nothing to score...)."""


@dataclasses.dataclass
class ScoreSettings:
    window: int = 64
    n_top: int = 20
    n_random: int = 20
    max_len: int = 256
    batch_size: int = 8
    ablation: bool = True
    ablation_tokens: int = 512
    seed: int = 0
    unit_chunk: int = 4


# kinds whose activation reaches the residual stream only as activation x one write row (exact fast path)
LINEAR_WRITE = {"neuron"}


def fast_path(kind: str, layer: int, cfg) -> bool:
    """Whether a unit's ablation losses come from the final residual (no forward): a LINEAR_WRITE activation
    unit of the last layer, or a unit whose Access gives its one write row into the last layer's output
    (dictionary features of the last layer's MLP: the error term and the other features are kept). score_units
    batches these unit_chunk at a time (one product per chunk)."""
    if unit_kind(kind).stats != "activation":
        return False
    a = ACCESS.get(kind)
    if a is not None and a.write_row is not None:
        return (a.write_layer(layer) if a.write_layer else layer) == cfg.n_layers - 1
    return kind in LINEAR_WRITE and layer == cfg.n_layers - 1


def write_row(model, kind: str, layer: int, idx: int) -> Tensor:
    """The fast path's write row of a unit ([1, d_model])."""
    a = ACCESS.get(kind)
    if a is not None and a.write_row is not None:
        return a.write_row(layer, idx).float().reshape(1, -1)
    return unit_kind(kind).write_weights(model.weights, layer, idx).float().reshape(1, -1)


def correlation_score(real, simulated) -> float:
    """Pearson correlation of two flat arrays (np.corrcoef); 0.0 when either is constant."""
    real, simulated = np.asarray(real, np.float64).ravel(), np.asarray(simulated, np.float64).ravel()
    if real.size < 2 or real.std() == 0 or simulated.std() == 0:
        return 0.0
    return float(np.corrcoef(real, simulated)[0, 1])


def balanced_accuracy(truth, pred) -> float | None:
    """(TPR + TNR) / 2 over the classes present; None when there are no windows."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    rates = [float((pred[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
    return float(np.mean(rates)) if rates else None


def check_held_out(book, stories: list[str]) -> dict:
    """Refuse stories the book's scan read (ScoreError naming how many); returns what was checked."""
    used = book.get_meta("scan_stories")
    if used is None:
        return {"checked": False, "reason": "the book does not record its scan's stories (scanned before "
                                            "they were recorded): held-out status not verified"}
    overlap = sorted(set(story_hashes(stories)) & set(used))
    if overlap:
        raise ScoreError(f"{len(overlap)} of the {len(stories)} scoring stories were read by the book's scan "
                         f"(the explanations were made from them): score on held-out stories")
    return {"checked": True, "scan_stories": len(used)}


# ---------------------------------------------------------------- collection (one forward per batch)
@dataclasses.dataclass
class HeldOut:
    """The held-out corpus as the scorer sees it.

    tokens/valid [n, T]; acts {(kind, layer): np [n, T, units]} for activation kinds; patterns
    {layer: np float16 [n, heads, T, T]}; means {(kind, layer): [units] or [heads, d_model]};
    window_starts: flat offsets (into the flat order of real non-BOS positions) where windows begin;
    abl_seqs: sequences used for ablation; resid: final residual at those sequences [m, T, d]."""

    tokens: np.ndarray
    valid: np.ndarray
    acts: dict
    patterns: dict
    means: dict
    flat: np.ndarray  # bool [n, T]: real, non-BOS positions
    window_of: np.ndarray  # [P] window id of each flat position
    n_windows: int
    abl_seqs: np.ndarray
    resid: Tensor | None
    forwards: int = 0
    fast_orig: float | None = None
    final: dict | None = None


def collect(model, stories: list[str], kinds_layers: set[tuple[str, int]], st: ScoreSettings,
            progress: bool = False) -> HeldOut:
    w = model.weights
    cfg = w.cfg
    seqs = list(batches(stories, model.tokenizer, st.max_len, st.batch_size))
    if not seqs:
        raise ScoreError("the scoring corpus has no stories")
    T = max(b.tokens.shape[1] for b in seqs)
    n = sum(b.tokens.shape[0] for b in seqs)
    tokens = np.zeros((n, T), np.int64)
    valid = np.zeros((n, T), bool)
    taps: dict[str, tuple[str, int]] = {}
    computed: dict[tuple[str, int], object] = {}  # activation units an Access computes from taps (features)
    for kind, layer in sorted(kinds_layers):
        if unit_kind(kind).stats == "activation":
            acc = access(kind)
            if acc.acts is not None:
                computed[(kind, layer)] = acc
                for t in acc.tap_list(layer):
                    taps.setdefault(t, ("", -1))  # read by acc.acts, not stored as is
            else:
                taps[acc.read_tap(layer)] = (kind, layer)
        else:
            taps[f"blocks.{layer}.attn.hook_pattern"] = (kind, layer)
            taps[f"blocks.{layer}.attn.hook_result"] = (kind, layer)
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    acts, patterns, sums = {}, {}, {}
    resid_all = []
    forwards = 0
    row = 0
    for b in tqdm(seqs, desc="score: forward", unit="batch", disable=not progress):
        out = run(w, b.tokens.to(w.device), list(taps) + [last])
        forwards += 1
        k, t = b.tokens.shape
        tokens[row:row + k, :t] = b.tokens.numpy()
        valid[row:row + k, :t] = b.mask.numpy()
        m = b.mask.clone()
        m[:, 0] = False
        for (kind, layer), acc in computed.items():
            xs = acc.acts(out, layer).float().cpu()
            arr = acts.setdefault((kind, layer), np.zeros((n, T, xs.shape[-1]), np.float32))
            arr[row:row + k, :t] = xs.numpy()
        for tap, (kind, layer) in taps.items():
            if not kind:
                continue
            x = out[tap].float().cpu()
            if tap.endswith("hook_pattern"):
                arr = patterns.setdefault(layer, np.zeros((n, x.shape[1], T, T), np.float16))
                arr[row:row + k, :, :t, :t] = x.numpy()
            elif tap.endswith("hook_result"):
                s = sums.setdefault(("head", layer), torch.zeros(x.shape[2], x.shape[3], dtype=torch.float64))
                s += x[m].double().sum(0)
            else:
                xs = x.movedim(unit_kind(kind).unit_axis, -1) if unit_kind(kind).unit_axis != 2 else x
                arr = acts.setdefault((kind, layer), np.zeros((n, T, xs.shape[-1]), np.float32))
                arr[row:row + k, :t] = xs.numpy()
        resid_all.append(out[last].float().cpu())
        row += k
    flat = valid.copy()
    flat[:, 0] = False
    n_real = int(flat.sum())
    means = {key: torch.as_tensor(a[flat].astype(np.float64).mean(0)) for key, a in acts.items()}
    for key, s in sums.items():
        means[key] = s / max(n_real, 1)
    # windows: per sequence, positions 1.. in chunks of `window`
    pos = np.broadcast_to(np.arange(T), (n, T))[flat]
    seq = np.broadcast_to(np.arange(n)[:, None], (n, T))[flat]
    win_in_seq = (pos - 1) // st.window
    key = seq * (T // st.window + 2) + win_in_seq
    _, window_of = np.unique(key, return_inverse=True)
    # ablation sequences: a seeded subset with at least ablation_tokens target positions
    rng = np.random.default_rng(st.seed)
    order = rng.permutation(n)
    lens = valid.sum(1) - 1
    take, tot = [], 0
    for i in order:
        take.append(i)
        tot += lens[i]
        if tot >= st.ablation_tokens:
            break
    abl = np.array(sorted(take))
    resid = None
    if st.ablation:
        full = torch.zeros(n, T, cfg.d_model)
        r0 = 0
        for r in resid_all:
            full[r0:r0 + r.shape[0], :r.shape[1]] = r
            r0 += r.shape[0]
        resid = full[torch.as_tensor(abl)]
    return HeldOut(tokens, valid, acts, patterns, means, flat, window_of, int(window_of.max()) + 1, abl, resid,
                   forwards)


# ---------------------------------------------------------------- per-unit scores
def _windows(ho: HeldOut, wmax: np.ndarray, st: ScoreSettings, rand: np.ndarray) -> np.ndarray:
    top = np.argsort(-wmax, kind="stable")[: st.n_top]
    return np.concatenate([top, rand])


def _pool(ho: HeldOut, win: np.ndarray) -> np.ndarray:
    """Flat positions of the given windows, window by window (duplicates kept, as pooled records)."""
    starts = np.searchsorted(ho.window_of, np.arange(ho.n_windows))
    ends = np.append(starts[1:], len(ho.window_of))
    return np.concatenate([np.arange(starts[w], ends[w]) for w in win])


def activation_scores(ho: HeldOut, prog: ActivationProgram, a_flat: np.ndarray, sim_full: np.ndarray,
                      st: ScoreSettings, rand: np.ndarray) -> dict:
    s_flat = sim_full[ho.flat]
    wmax = np.full(ho.n_windows, -np.inf)
    np.maximum.at(wmax, ho.window_of, a_flat)
    win = _windows(ho, wmax, st, rand)
    pool = _pool(ho, win)
    sim = correlation_score(a_flat[pool], s_flat[pool])
    smax = np.full(ho.n_windows, -np.inf)
    np.maximum.at(smax, ho.window_of, s_flat)
    mu = float(a_flat.mean())
    t = float(wmax[win[: st.n_top]].min()) if st.n_top else float(wmax.max())
    truth = wmax[win] > mu + (t - mu) / 2
    if prog.clauses:
        hi = max(c.scale for c in prog.clauses)
        pred = smax[win] > (prog.baseline + hi) / 2 if hi > prog.baseline else np.zeros(len(win), bool)
    else:
        pred = np.zeros(len(win), bool)
    return {"simulation": sim, "detection": balanced_accuracy(truth, pred), "n_windows": int(len(win))}


def attention_scores(ho: HeldOut, true_pat: np.ndarray, sim_pat: np.ndarray, st: ScoreSettings,
                     rand: np.ndarray) -> dict:
    """true_pat / sim_pat [n, T, T] of one head."""
    n, T, _ = true_pat.shape
    nonbos = true_pat[:, :, 1:].max(-1).astype(np.float32)  # [n, T] strongest non-BOS attention per query
    wmax = np.full(ho.n_windows, -np.inf)
    np.maximum.at(wmax, ho.window_of, nonbos[ho.flat])
    win = _windows(ho, wmax, st, rand)
    qs = np.argwhere(ho.flat)[_pool(ho, win)]  # (seq, q)
    causal = np.tril(np.ones((T, T), bool))
    real, simv = [], []
    for s, q in qs:
        keys = causal[q] & ho.valid[s]
        real.append(true_pat[s, q][keys])
        simv.append(sim_pat[s, q][keys])
    return {"simulation": correlation_score(np.concatenate(real), np.concatenate(simv)), "detection": None,
            "n_windows": int(len(win))}


# ---------------------------------------------------------------- ablation
def _targets(ho: HeldOut) -> tuple[Tensor, Tensor]:
    tok = torch.as_tensor(ho.tokens[ho.abl_seqs])
    val = torch.as_tensor(ho.valid[ho.abl_seqs])
    tgt_mask = val[:, 1:] & val[:, :-1]
    return tok, tgt_mask


def _final_cache(model, ho: HeldOut) -> dict:
    """What every fast-path variant shares: the centred final residual at the ablation positions, its
    pre-scale logits Zr = (r_c * g) @ W_U [P, V], the bias logits c0 [V], |r_c|^2 and the targets."""
    if ho.final is None:
        w = model.weights
        tok, tm = _targets(ho)
        r = ho.resid[:, :-1][tm].float()
        if w.cfg.norm == "LN":
            r = r - r.mean(-1, keepdim=True)
        WU = w.W_U.float()
        ho.final = {"r": r, "y": tok[:, 1:][tm], "tm": tm, "Zr": (r * w.lnf_w.float()) @ WU,
                    "c0": w.lnf_b.float() @ WU + w.b_U.float(), "rr": (r * r).sum(-1)}
    return ho.final


def fast_losses(model, ho: HeldOut, rows: Tensor, deltas: Tensor) -> Tensor:
    """Mean loss (nats/token) over the ablation positions with the final residual r replaced by
    r + delta_u * row_u, one variant per unit: rows [u, d_model], deltas [u, m, T] -> [u].
    Exact: LN(r + d w) = (r_c + d w_c) / s(d) * g + b with s(d)^2 = (|r_c|^2 + 2 d r_c.w_c + d^2 |w_c|^2) / D + eps."""
    w = model.weights
    cfg = w.cfg
    F = _final_cache(model, ho)
    r, y, Zr, c0 = F["r"], F["y"], F["Zr"], F["c0"]
    d = deltas[:, :, :-1][:, F["tm"]].float()  # [u, P]
    rows = rows.float()
    if cfg.norm == "LN":
        rows = rows - rows.mean(-1, keepdim=True)
    Zw = (rows * w.lnf_w.float()) @ w.W_U.float()  # [u, V]
    var = (F["rr"][None] + 2 * d * (r @ rows.T).T + d * d * (rows * rows).sum(-1)[:, None]) / cfg.d_model
    s = (var + cfg.eps).sqrt()  # [u, P]
    out = []
    buf = torch.empty_like(Zr)
    for u in range(rows.shape[0]):
        torch.addcmul(Zr, d[u][:, None], Zw[u][None], out=buf)  # one [P, V] buffer, updated in place
        buf.div_(s[u][:, None]).add_(c0)
        out.append((buf.logsumexp(-1) - buf.gather(-1, y[:, None])[:, 0]).double().mean())
    return torch.stack(out)


def forward_loss(model, ho: HeldOut, interventions: dict | None) -> float:
    """Mean loss over the ablation positions with ``interventions`` (one forward of the ablation sequences)."""
    tok, tm = _targets(ho)
    logits = run(model.weights, tok.to(model.weights.device), ("logits",), interventions)["logits"][:, :-1].float()
    lp = logits.log_softmax(-1).gather(-1, tok[:, 1:, None].to(logits.device))[..., 0].cpu()
    return float(-lp[tm].double().mean())


# ---------------------------------------------------------------- everything
@dataclasses.dataclass
class UnitScore:
    kind: str
    layer: int
    idx: int
    explanation_id: int | None
    author: str
    simulation: float | None
    detection: float | None
    ablation: float | None
    carry: float | None
    n_windows: int

    def to_row(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ScoreResult:
    scores: list[UnitScore]
    forwards: int  # forward passes run (collection + ablation forwards)
    batches: int  # scoring batches (the bound: one forward each)
    held_out: dict
    ce_original: float | None

    def summary(self) -> str:
        sims = np.array([s.simulation for s in self.scores if s.simulation is not None])
        lines = [f"scored {len(self.scores)} explanations with {self.forwards} forward passes "
                 f"({self.batches} scoring batches)"]
        if len(sims):
            lines.append(f"  simulation: median {np.median(sims):.3f}, top decile >= {np.quantile(sims, 0.9):.3f}, "
                         f"mean {sims.mean():.3f}; >= 0.5: {(sims >= 0.5).sum()}, >= 0.8: {(sims >= 0.8).sum()}")
        abl = [s.ablation for s in self.scores if s.ablation is not None]
        if abl:
            lines.append(f"  ablation: median {np.median(abl):.3f}")
        return "\n".join(lines)


def simulate_unit(prog, kind: str, ho: HeldOut, R: Resolver) -> np.ndarray:
    if isinstance(prog, ActivationProgram):
        return simulate_activation(prog, ho.tokens, R, ho.valid)
    return simulate_pattern(prog, ho.tokens, R)


def score_units(model, ho: HeldOut, items: list[tuple], R: Resolver, st: ScoreSettings,
                progress: bool = False, done: dict[int, UnitScore] | None = None,
                record=None) -> tuple[list[UnitScore], int, float | None]:
    """items: (kind, layer, idx, explanation_id, author, program). Returns (scores, extra forwards, L_orig).

    Resuming: ``done`` {explanation id: its score} from an interrupted run of the same items is taken as is;
    ``record(scores)`` is called with each group of scores as it becomes final (a unit scored alone, or a
    whole fast-path chunk), so what a killed run recorded is whole chunks from the first on, and the units
    left form the very chunks an uninterrupted run forms (the figures are identical)."""
    done = done or {}
    rng = np.random.default_rng(st.seed + 1)
    rand = rng.choice(ho.n_windows, min(st.n_random, ho.n_windows), replace=False)
    out: list[UnitScore] = []
    pending_fast: list[tuple[int, Tensor, Tensor, Tensor]] = []
    extra = 0
    l_orig = None
    cfg = model.weights.cfg
    if st.ablation:
        l_orig = forward_loss(model, ho, None)
        extra += 1
    for kind, layer, idx, eid, author, prog in tqdm(items, desc="score", unit="unit", disable=not progress):
        if eid in done:
            out.append(done[eid])
            continue
        spec = unit_kind(kind)
        sim_full = simulate_unit(prog, kind, ho, R)
        if spec.stats == "activation":
            a = ho.acts[(kind, layer)][..., idx]
            sc = activation_scores(ho, prog, a[ho.flat], sim_full, st, rand)
        else:
            sc = attention_scores(ho, ho.patterns[layer][:, idx].astype(np.float32), sim_full, st, rand)
        us = UnitScore(kind, layer, idx, eid, author, sc["simulation"], sc["detection"], None, None, sc["n_windows"])
        out.append(us)
        if not st.ablation:
            _record(record, [us])
            continue
        mean = ho.means[(kind, layer)][idx]
        if fast_path(kind, layer, cfg):
            a_abl = torch.as_tensor(a[ho.abl_seqs])
            s_abl = torch.as_tensor(sim_full[ho.abl_seqs])
            keep = torch.zeros_like(a_abl, dtype=torch.bool)
            keep[:, 0] = True  # BOS keeps its activation
            d_mean = torch.where(keep, 0.0, mean.float() - a_abl)
            d_sim = torch.where(keep, 0.0, s_abl - a_abl)
            pending_fast.append((len(out) - 1, write_row(model, kind, layer, idx), d_mean, d_sim))
            if len(pending_fast) >= st.unit_chunk:
                _flush(model, ho, pending_fast, out, l_orig, record)
        elif access(kind).replace is None:  # no splice through the forward for this kind: no ablation score
            _record(record, [us])
        else:
            acc = access(kind)
            tok = ho.tokens[ho.abl_seqs]
            sim_t = torch.as_tensor(sim_full[ho.abl_seqs])
            if spec.stats == "activation":
                orig = torch.as_tensor(a[ho.abl_seqs])
                sim_t = torch.where(torch.arange(tok.shape[1])[None] == 0, orig, sim_t)
                iv_sim = acc.replace(layer, [idx], [sim_t])
            else:
                iv_sim = acc.replace(layer, [idx], [sim_t])
            iv_mean = mean_replacement(kind, layer, [idx], [mean.float()])
            l_sim, l_mean = forward_loss(model, ho, iv_sim), forward_loss(model, ho, iv_mean)
            extra += 2
            us.ablation, us.carry = recovered(l_mean, l_sim, l_orig), l_mean - l_orig
            _record(record, [us])
    if pending_fast:
        _flush(model, ho, pending_fast, out, l_orig, record)
    return out, extra, l_orig


def _record(record, scores: list[UnitScore]) -> None:
    if record is not None:
        record(scores)


def _flush(model, ho, pending, out, l_orig, record=None) -> None:
    rows = torch.cat([p[1] for p in pending])
    d_mean = torch.stack([p[2] for p in pending])
    d_sim = torch.stack([p[3] for p in pending])
    lm = fast_losses(model, ho, rows, d_mean)
    ls = fast_losses(model, ho, rows, d_sim)
    if ho.fast_orig is None:  # the same formula with no change: the reference for every fast-path unit
        ho.fast_orig = float(fast_losses(model, ho, rows[:1], torch.zeros_like(d_mean[:1]))[0])
    l0 = ho.fast_orig
    for (j, *_), m, s in zip(pending, lm.tolist(), ls.tolist()):
        out[j].ablation, out[j].carry = recovered(m, s, l0), m - l0
    _record(record, [out[j] for j, *_ in pending])
    pending.clear()
