"""The scorecard: splice every explanation into the model at once and measure the loss it recovers.

Every explained activation unit (an explanation with at least one input clause) of one kind has its
activation replaced by its simulation; every other unit of that kind is mean-ablated (held-out mean; BOS
keeps its activation): for neurons the whole MLP; for dictionary features (``kind="feature"``, their
Access registered) every feature of the dictionary, each change of activation ``delta`` added to the MLP's
output as ``delta x W_dec[i]`` — the dictionary's error term is kept in every variant, the baseline too. Then

    recovered = recovered(L_all_mean_ablated, L_explained, L_original)     (handcraft.evaluate.recovered)

over every next-token prediction of the held-out stories. The same figure is given for subsets (each
layer, each author, each typing type alone: units outside the subset are mean-ablated) and along a
curve: the n units that recover most alone (their stored individual scores: carry x ablation score, else
carry x simulation score) explained, the rest mean-ablated, for n on a geometric grid, which says how
many units reach 0.5 / 0.8 of the recoverable loss. Each run is stored (``book/explanations.scorecards``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import torch
from tqdm.auto import tqdm

from ..book import Book
from ..book import explanations as be
from ..book import roles as br
from ..handcraft.evaluate import recovered
from ..model import run
from ..units import unit_kind
from .access import ACCESS, access, merge
from .labels import import_labels
from .program import ActivationProgram
from .run import resolver_for, scoring_items
from .score import HeldOut, ScoreError, ScoreSettings, check_held_out, collect
from .simulate import simulate_activation


def _rows(ho: HeldOut) -> dict:
    """{(kind, layer): its n write rows [n, d_model]} for the collected kinds whose Access has write_row."""
    out = {}
    for (kind, layer), acts in ho.acts.items():
        a = ACCESS.get(kind)
        if a is not None and a.write_row is not None:
            out[(kind, layer)] = torch.stack([a.write_row(layer, i).float() for i in range(acts.shape[-1])])
    return out


def _loss(model, ho: HeldOut, sims: dict, explained: set, bs: int, rows: dict | None = None) -> float:
    """Mean next-token loss over the held-out corpus with ``explained`` units simulated and the other units
    of each collected (kind, layer) mean-ablated; ``sims`` is None for the original model."""
    w = model.weights
    tot, n = 0.0, 0
    for s in range(0, ho.tokens.shape[0], bs):
        tok = torch.as_tensor(ho.tokens[s:s + bs])
        val = torch.as_tensor(ho.valid[s:s + bs])
        ivs = []
        if sims is not None:
            for (kind, layer), acts in ho.acts.items():
                mean = ho.means[(kind, layer)].float()
                ax = unit_kind(kind).unit_axis
                rep = mean[None, None].expand(tok.shape[0], tok.shape[1], -1).clone()
                for (k, l, i) in explained:
                    if (k, l) == (kind, layer):
                        rep[..., i] = torch.as_tensor(sims[(k, l, i)][s:s + bs])
                rep[:, 0] = torch.as_tensor(acts[s:s + bs, 0])  # BOS keeps its activation
                if (kind, layer) in (rows or {}):  # features: + (replacement - activation) @ W_dec
                    W = rows[(kind, layer)]
                    delta = rep - torch.as_tensor(acts[s:s + bs])

                    def add(x, delta=delta, W=W):
                        return x + (delta.to(W) @ W).to(x)
                    ivs.append({ACCESS[kind].write_tap(layer): add})
                    continue

                def fn(x, rep=rep, ax=ax):
                    r = rep.to(x)
                    return r if ax == 2 else r.movedim(-1, ax)
                ivs.append({access(kind).read_tap(layer): fn})
        logits = run(w, tok.to(w.device), ("logits",), merge(*ivs) if ivs else None)["logits"][:, :-1].float()
        lp = logits.log_softmax(-1).gather(-1, tok[:, 1:, None].to(logits.device))[..., 0].cpu()
        m = val[:, 1:] & val[:, :-1]
        tot -= float(lp[m].double().sum())
        n += int(m.sum())
    return tot / max(n, 1)


def _grid(n: int, points: int) -> list[int]:
    if n <= 0:
        return []
    g = sorted({int(round(x)) for x in np.geomspace(1, n, num=min(points, n))} | {n})
    return [x for x in g if x >= 1]


@dataclasses.dataclass
class Scorecard:
    ce_original: float
    ce_ablated: float
    ce_explained: float
    recovered: float | None
    n_explained: int
    n_units: int
    groups: list[dict]
    curve: list[dict]
    reach: dict  # {"0.5": n or None, "0.8": n or None}
    held_out: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        r = "n/a" if self.recovered is None else f"{self.recovered:.3f}"
        lines = [f"scorecard: {self.n_explained}/{self.n_units} units explained (simulated), the rest mean-ablated: "
                 f"recovers {r} of the loss (original {self.ce_original:.4f}, all ablated {self.ce_ablated:.4f}, "
                 f"explained {self.ce_explained:.4f} nats/token)"]
        for g in self.groups:
            gr = "n/a" if g["recovered"] is None else f"{g['recovered']:.3f}"
            lines.append(f"  {g['by']:6s} {g['group']!s:24s} {g['n_units']:5d} units  recovered {gr}")
        lines.append("  curve: " + ", ".join(f"{c['n']}: {c['recovered']:.3f}" for c in self.curve
                                             if c["recovered"] is not None))
        lines.append("  units to reach 0.5 / 0.8 of the recoverable loss: "
                     f"{self.reach.get('0.5') or 'not reached'} / {self.reach.get('0.8') or 'not reached'}")
        return "\n".join(lines)


def scorecard(book: Book, model, stories: list[str], settings: ScoreSettings | None = None,
              curve_points: int = 8, corpus: str | None = None, progress: bool = False,
              kind: str = "neuron") -> Scorecard:
    """The scorecard of the explanations of ``kind``'s units (module doc): "neuron" (the MLP) or "feature"
    (a dictionary's features; their Access must be registered: ``dictionary.access``)."""
    st = settings or ScoreSettings()
    st = dataclasses.replace(st, ablation=False)
    held = check_held_out(book, stories)
    if kind != "neuron" and not any(k == kind for k, _, _ in be.current(book, kind)) and \
            not any(u.kind == kind for u in book.labelled()):  # refused before anything is written
        raise ScoreError(f"{book.path} has no explanations of {kind} units: run `circuitbook explain` first")
    import_labels(book)
    if not scoring_items(book, [kind]):
        raise ScoreError(f"{book.path} has no explanations with a program to splice in: run `circuitbook explain` "
                         f"first")
    items = [it for it in scoring_items(book, [kind]) if unit_kind(it[0]).stats == "activation"
             and isinstance(it[5], ActivationProgram) and it[5].clauses]
    kinds_layers = {(k, l) for k, l, _ in book.units() if k == kind
                    and (k, l) in {(a, b) for a, b, *_ in items}}
    if not kinds_layers:
        if kind != "neuron":
            raise ScoreError(f"{book.path} has no explanations of {kind} units with an input rule to splice in")
        kinds_layers = {("neuron", l) for l in range(model.cfg.n_layers)}
    ho = collect(model, stories, kinds_layers, st, progress)
    n_units = sum(ho.acts[kl].shape[-1] for kl in ho.acts)
    R = resolver_for(book)
    sims = {(k, l, i): simulate_activation(p, ho.tokens, R, ho.valid) for k, l, i, _, _, p in items}
    bsz = st.batch_size
    rows = _rows(ho)
    steps = tqdm(desc="scorecard", unit="variant", disable=not progress)

    def loss(explained, orig=False):
        steps.update(1)
        return _loss(model, ho, None if orig else sims, explained, bsz, rows)

    ce_o = loss(set(), orig=True)
    ce_a = loss(set())
    every = {it[:3] for it in items}
    ce_e = loss(every)
    groups = []
    types = {(d["layer"], d["idx"]): d["type"] for d in br.unit_types(book)}
    subsets: dict[tuple[str, str], set] = defaultdict(set)
    for k, l, i, eid, author, _ in items:
        subsets[("layer", f"{k} layer {l}")].add((k, l, i))
        subsets[("author", author)].add((k, l, i))
        t = types.get((l, i)) if k == "neuron" else None
        if t:
            subsets[("type", t)].add((k, l, i))
    for (by, name), s in sorted(subsets.items()):
        if len(subsets) > 1 and s != every:
            ce = loss(s)
        else:
            ce = ce_e
        groups.append({"by": by, "group": name, "n_units": len(s), "ce": ce, "recovered": recovered(ce_a, ce, ce_o)})
    scores = be.latest_scores(book)
    def worth(it):
        sc = scores.get(it[3], {})
        c, a, s = sc.get("carry"), sc.get("ablation"), sc.get("simulation")
        if c is not None and a is not None:
            return c * a
        return (c or 0.0) * (s or 0.0)
    ranked = sorted(items, key=lambda it: -worth(it))
    curve = []
    for n in _grid(len(ranked), curve_points):
        s = {it[:3] for it in ranked[:n]}
        ce = ce_e if n == len(ranked) else loss(s)
        curve.append({"n": n, "ce": ce, "recovered": recovered(ce_a, ce, ce_o)})
    steps.close()
    reach = {}
    for thr in (0.5, 0.8):
        hit = [c["n"] for c in curve if c["recovered"] is not None and c["recovered"] >= thr]
        reach[str(thr)] = hit[0] if hit else None
    card = Scorecard(ce_o, ce_a, ce_e, recovered(ce_a, ce_e, ce_o), len(items), n_units, groups, curve, reach, held)
    be.save_scorecard(book, card.to_dict(), corpus, {"settings": dataclasses.asdict(st), "curve_points": curve_points,
                                                     "held_out": held, "kind": kind})
    return card
