"""How much of the original model a handcrafted one recovers, and where it loses.

On a corpus, at every real position that has a next token:
    cross-entropy of the original model, the handcrafted model and each ablation baseline;
    KL(original || handcrafted) and top-1 agreement of the two models;
    loss recovered = (L_ablated - L_handcrafted) / (L_ablated - L_original) for each baseline
    (1 = as good as the original, 0 = no better than removing the components the spec replaces;
    None when the baseline equals the original, e.g. a spec that only adds neurons);
and a breakdown of the extra loss, delta = -log p_hand(next) + log p_orig(next): the positions where the
handcrafted model loses most (with their contexts), and the total per class of the predicted token
(and of the current token), to point at what the explanation is missing.

A model here is ``Weights``, or ``(Weights, interventions)`` for one that runs with forward interventions
(a spec that replaces dictionary features: the dictionary spliced in, :mod:`.features`). Its baselines
then ablate the replaced features inside the same splice, and the spliced dictionary as it is (no feature
replaced) is reported as a reference CE (``ce_references``), with the error-term setting in ``settings``.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Iterable

import torch
from torch import Tensor

from ..model import Weights, run
from ..model.maths import next_token_log_probs
from ..progress import progress as progress_bar


@dataclasses.dataclass
class TokenLoss:
    """One position where the handcrafted model loses: ``context`` (text up to and including the current
    token), ``target`` (the true next token), losses in nats, ``delta`` = loss_hand - loss_orig."""

    story: int
    pos: int
    context: str
    target: str
    loss_orig: float
    loss_hand: float
    delta: float


@dataclasses.dataclass
class GroupLoss:
    """Extra loss of the handcrafted model summed over the positions of one group (a class or a token)."""

    group: str
    n: int
    total_delta: float  # nats, summed over the group's positions
    mean_delta: float
    ce_orig: float
    ce_hand: float


@dataclasses.dataclass
class Evaluation:
    """The result of :func:`evaluate`. Losses are nats per predicted token over ``n_tokens`` positions.

    ce_baselines / recovered: {baseline name ("zero", "mean", ...): value}. by_target / by_current:
    GroupLoss per class of the predicted / current token (per token when no classes were given), largest
    total_delta first; worst: the ``top_k`` positions with the largest delta, largest first.
    """

    n_tokens: int
    ce_original: float
    ce_handcrafted: float
    kl: float
    top1_agreement: float
    ce_baselines: dict[str, float]
    recovered: dict[str, float | None]
    worst: list[TokenLoss]
    by_target: list[GroupLoss]
    by_current: list[GroupLoss]
    ce_references: dict[str, float] = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self, n_groups: int = 8) -> str:
        lines = [f"tokens {self.n_tokens}: CE original {self.ce_original:.4f}, handcrafted {self.ce_handcrafted:.4f}, "
                 f"KL {self.kl:.4f}, top-1 agreement {self.top1_agreement:.3f}"]
        for k, v in self.ce_baselines.items():
            r = self.recovered.get(k)
            lines.append(f"  {k}-ablation baseline CE {v:.4f} -> loss recovered "
                         + ("n/a (baseline = original)" if r is None else f"{r:.3f}"))
        for k, v in self.ce_references.items():
            lines.append(f"  reference: {k} CE {v:.4f}")
        for d in self.settings.get("dictionaries", []):
            lines.append(f"  dictionary {d['name']!r} ({d['kind']}, layer {d['layer']}) spliced in place of the MLP, "
                         f"features {d['replaced']} handcrafted, error term "
                         f"{'kept' if self.settings.get('dictionary_error') == 'keep' else 'dropped'} "
                         f"(dictionary_error: {self.settings.get('dictionary_error')})")
        if self.by_target:
            lines.append("  extra loss by predicted token group: " + ", ".join(
                f"{g.group} {g.total_delta / self.n_tokens:+.4f} (n={g.n})" for g in self.by_target[:n_groups]))
        for t in self.worst[:5]:
            lines.append(f"  worst: {t.context[-60:]!r} -> {t.target!r}: {t.loss_orig:.2f} -> {t.loss_hand:.2f} nats")
        return "\n".join(lines)


def recovered(l_ablated: float, l_hand: float, l_orig: float) -> float | None:
    """(L_ablated - L_handcrafted) / (L_ablated - L_original); None when the denominator is ~0."""
    den = l_ablated - l_orig
    if abs(den) < 1e-9:
        return None
    return (l_ablated - l_hand) / den


def _logp(weights: Weights, tokens: Tensor, interventions=None) -> Tensor:
    return next_token_log_probs(run(weights, tokens, ("logits",), interventions)["logits"].float())


def _runnable(m) -> tuple[Weights, dict | None]:
    """A model argument (``Weights`` or ``(Weights, interventions)``) -> (weights, interventions or None)."""
    return (m[0], m[1]) if isinstance(m, tuple) else (m, None)


class _Groups:
    """Accumulates delta / losses per group; membership [n_groups, d_vocab] bool."""

    def __init__(self, names: list[str], member: Tensor):
        self.names, self.member = names, member
        z = lambda: torch.zeros(len(names), dtype=torch.float64)  # noqa: E731
        self.n, self.delta, self.lo, self.lh = z(), z(), z(), z()

    def add(self, key: Tensor, delta: Tensor, lo: Tensor, lh: Tensor):
        M = self.member[:, key].double()  # [G, n]
        self.n += M.sum(1)
        self.delta += M @ delta.double()
        self.lo += M @ lo.double()
        self.lh += M @ lh.double()

    def result(self, top: int | None = None) -> list[GroupLoss]:
        order = torch.argsort(self.delta, descending=True).tolist()
        out = [GroupLoss(self.names[g], int(self.n[g]), float(self.delta[g]), float(self.delta[g] / self.n[g]),
                         float(self.lo[g] / self.n[g]), float(self.lh[g] / self.n[g]))
               for g in order if self.n[g] > 0]
        return out[:top] if top else out


def evaluate(original: Weights, handcrafted, batches: Iterable, baselines: dict | None = None,
             tokenizer=None, classes: dict[str, list[int]] | None = None, top_k: int = 25, context: int = 16,
             baseline_interventions: dict[str, dict] | None = None, progress: bool = False,
             references: dict | None = None, settings: dict | None = None) -> Evaluation:
    """Compare ``handcrafted`` with ``original`` on ``batches`` (circuitbook.corpus.Batch).

    ``handcrafted`` and the values of ``baselines`` / ``references`` are models (module docstring).
    ``baselines``: {name: model} (e.g. the zero- and mean-ablated originals from
    :func:`circuitbook.handcraft.baselines`); ``baseline_interventions``: {name: forward interventions}
    for baselines run on ``original`` with them (resample ablation). ``references``: {name: model} whose
    CE is reported but is no baseline. ``settings``: stored with the result as given.
    ``classes``: {class: token ids} to group the breakdown by; without it, groups are single tokens.
    """
    baselines = {k: _runnable(v) for k, v in (baselines or {}).items()}
    baselines.update({k: (original, iv) for k, iv in (baseline_interventions or {}).items()})
    refs = {k: _runnable(v) for k, v in (references or {}).items()}
    hand_w, hand_iv = _runnable(handcrafted)
    V = original.cfg.d_vocab
    if classes:
        names = sorted(classes)
        member = torch.zeros(len(names) + 1, V, dtype=torch.bool)
        for g, c in enumerate(names):
            ids = torch.tensor([i for i in classes[c] if 0 <= i < V], dtype=torch.long)
            member[g, ids] = True
        member[-1] = ~member[:-1].any(0)
        names = names + ["(no class)"]
    else:
        names = [tokenizer.token_str(i) if tokenizer else str(i) for i in range(V)]
        member = None
    by_t = _Groups(names, member) if member is not None else None
    by_c = _Groups(names, member) if member is not None else None
    tok_delta = torch.zeros(V, dtype=torch.float64)
    tok_n, tok_lo, tok_lh = torch.zeros_like(tok_delta), torch.zeros_like(tok_delta), torch.zeros_like(tok_delta)
    tok_cur_delta, tok_cur_n = torch.zeros_like(tok_delta), torch.zeros_like(tok_delta)
    tot = {"orig": 0.0, "hand": 0.0, "kl": 0.0, "agree": 0.0}
    tot_bl = dict.fromkeys(baselines, 0.0)
    tot_ref = dict.fromkeys(refs, 0.0)
    n = 0
    heap: list[tuple[float, int, Tensor, int, float, float]] = []
    counter = 0
    dev = original.device
    for b in progress_bar(batches, desc="evaluate", unit="batch", enabled=progress):
        tokens = b.tokens.to(dev)
        tgt, m = tokens[:, 1:], b.mask[:, 1:].to(dev)
        if not m.any():
            continue
        lo_all = _logp(original, tokens)
        lo = lo_all.gather(-1, tgt[..., None])[..., 0]
        top_o = lo_all.argmax(-1)
        lh_all = _logp(hand_w, tokens, hand_iv)
        lh = lh_all.gather(-1, tgt[..., None])[..., 0]
        kl = (lo_all.exp() * (lo_all - lh_all)).sum(-1)
        agree = (lh_all.argmax(-1) == top_o).float()
        del lo_all, lh_all
        tot["orig"] -= float(lo[m].double().sum())
        tot["hand"] -= float(lh[m].double().sum())
        tot["kl"] += float(kl[m].double().sum())
        tot["agree"] += float(agree[m].sum())
        for tot_of, models in ((tot_bl, baselines), (tot_ref, refs)):
            for name, (wb, iv) in models.items():
                lb = _logp(wb, tokens, iv).gather(-1, tgt[..., None])[..., 0]
                tot_of[name] -= float(lb[m].double().sum())
        n += int(m.sum())
        delta = (lo - lh)[m].cpu()
        tgt_m, cur_m = tgt[m].cpu(), tokens[:, :-1][m].cpu()
        lo_m, lh_m = -lo[m].cpu(), -lh[m].cpu()
        tok_delta.index_add_(0, tgt_m, delta.double())
        tok_n.index_add_(0, tgt_m, torch.ones_like(delta, dtype=torch.float64))
        tok_lo.index_add_(0, tgt_m, lo_m.double())
        tok_lh.index_add_(0, tgt_m, lh_m.double())
        tok_cur_delta.index_add_(0, cur_m, delta.double())
        tok_cur_n.index_add_(0, cur_m, torch.ones_like(delta, dtype=torch.float64))
        if by_t is not None:
            by_t.add(tgt_m, delta, lo_m, lh_m)
            by_c.add(cur_m, delta, lo_m, lh_m)
        # worst positions: keep a bounded heap of (delta, ...)
        rows, cols = torch.nonzero(m.cpu(), as_tuple=True)
        k = min(top_k, len(delta))
        vals, idx = delta.topk(k)
        for v, i in zip(vals.tolist(), idx.tolist()):
            r, c = int(rows[i]), int(cols[i])
            item = (v, counter, b.tokens[r, max(0, c - context + 1):c + 2].clone(), int(b.story[r]), c,
                    float(lo_m[i]), float(lh_m[i]))
            counter += 1
            if len(heap) < 4 * top_k:  # room for repeated contexts, deduplicated at the end
                heapq.heappush(heap, item)
            elif v > heap[0][0]:
                heapq.heapreplace(heap, item)
    if n == 0:
        from .spec import SpecError

        raise SpecError("the evaluation corpus gave no positions to score")
    worst, seen = [], set()
    for v, _, ctx, story, c, l_o, l_h in sorted(heap, key=lambda t: -t[0]):
        text = tokenizer.decode(ctx[:-1].tolist()) if tokenizer else " ".join(map(str, ctx[:-1].tolist()))
        tgt_s = tokenizer.token_str(int(ctx[-1])) if tokenizer else str(int(ctx[-1]))
        if (text, tgt_s) not in seen and len(worst) < top_k:
            seen.add((text, tgt_s))
            worst.append(TokenLoss(story, c + 1, text, tgt_s, l_o, l_h, v))
    ce_o, ce_h = tot["orig"] / n, tot["hand"] / n
    ce_b = {k: v / n for k, v in tot_bl.items()}
    if by_t is not None:
        by_target, by_current = by_t.result(), by_c.result()
    else:
        def per_token(delta, cnt, lo, lh):
            order = torch.argsort(delta, descending=True)[:30].tolist()
            return [GroupLoss(names[i], int(cnt[i]), float(delta[i]), float(delta[i] / cnt[i]),
                              float(lo[i] / cnt[i]) if lo is not None else math.nan,
                              float(lh[i] / cnt[i]) if lh is not None else math.nan) for i in order if cnt[i] > 0]
        by_target = per_token(tok_delta, tok_n, tok_lo, tok_lh)
        by_current = per_token(tok_cur_delta, tok_cur_n, None, None)
    return Evaluation(
        n_tokens=n, ce_original=ce_o, ce_handcrafted=ce_h, kl=tot["kl"] / n, top1_agreement=tot["agree"] / n,
        ce_baselines=ce_b, recovered={k: recovered(v, ce_h, ce_o) for k, v in ce_b.items()},
        worst=worst, by_target=by_target, by_current=by_current,
        ce_references={k: v / n for k, v in tot_ref.items()}, settings=dict(settings or {}))


def mean_loss(weights: Weights, batches: Iterable, interventions=None) -> tuple[float, int]:
    """Plain cross-entropy (nats/token) and token count: the one-model special case, for baselines and tests."""
    tot, n = 0.0, 0
    for b in batches:
        tokens = b.tokens.to(weights.device)
        tgt, m = tokens[:, 1:], b.mask[:, 1:].to(weights.device)
        lp = _logp(weights, tokens, interventions).gather(-1, tgt[..., None])[..., 0]
        tot -= float(lp[m].double().sum())
        n += int(m.sum())
    return tot / max(n, 1), n


# --------------------------------------------------------------------------- a spec, end to end
@dataclasses.dataclass
class SpecResult:
    """:func:`evaluate_spec`'s result: the built model and its evaluation (baselines "zero" and "mean")."""

    built: "object"
    evaluation: Evaluation


def baselines(original: Weights, removed, means, modes=("zero", "mean"), features=None) -> dict:
    """The original model with the units a spec replaces (``Built.removed``) ablated, one per mode.
    Replaced dictionary features (``features``: ``Built.features``) are ablated inside their splice, so
    those baselines are (weights, interventions)."""
    from .splice import ablate_units

    in_weights = [u for u in removed if u[0] != "feature"]
    out = {}
    for m in modes:
        w = ablate_units(original, in_weights, m, means)
        out[m] = w if features is None else (w, features.ablated(w, m))
    return out


def evaluate_spec(spec, model, fit_stories, eval_stories, classes=None, max_len: int = 256, batch_size: int = 4,
                  progress: bool = False, top_k: int = 25, max_calibration_tokens: int = 16384,
                  fit_progress: bool | None = None, dictionaries: dict | None = None) -> SpecResult:
    """Build ``spec`` on ``model`` (fitted on ``fit_stories``), then evaluate it on ``eval_stories``
    against the original and its zero- and mean-ablation baselines (means over ``fit_stories``).

    The one call the demo needs::

        r = evaluate_spec(load_spec("spec.yaml"), model, stories[:100], stories[100:], classes)
        print(r.evaluation.summary())

    ``fit_progress`` (default ``progress``): progress bars while fitting; the CLI turns them off so that a
    spec error found while building is the only thing it prints. ``dictionaries``: {name: FeatureDictionary}
    for a spec that names dictionary features (see :func:`.build.build`).
    """
    from ..corpus import batches
    from .build import build
    from .splice import unit_means

    fit_stories, eval_stories = list(fit_stories), list(eval_stories)
    fit = lambda: batches(fit_stories, model.tokenizer, max_len, batch_size)  # noqa: E731
    fp = progress if fit_progress is None else fit_progress
    means = unit_means(model.weights, fit(), fp)
    built = build(spec, model, fit, classes, means, max_calibration_tokens, fp, dictionaries)
    bl = baselines(model.weights, built.removed, means, features=built.features)
    refs, settings = {}, {}
    if built.features is not None:
        names = ", ".join(repr(p.fd.name) for p in built.features.parts)
        refs[f"dictionary {names} spliced in as it is (error {built.features.error})"] = \
            (model.weights, built.features.plain(model.weights))
        settings = built.features.settings()
    ev = evaluate(model.weights, built.model(), batches(eval_stories, model.tokenizer, max_len, batch_size), bl,
                  model.tokenizer, classes, top_k=top_k, progress=progress, references=refs, settings=settings)
    return SpecResult(built, ev)


def store(book, result: SpecResult, model=None, corpus: str | None = None, run_key: str | None = None) -> int:
    """Save a :class:`SpecResult` in the book (spec text, figures, full breakdown, replaced/added units).
    ``run_key`` (see book.handcraft.save_evaluation): the same key replaces the earlier evaluation."""
    from ..book import handcraft as hb

    built = result.built
    units = [(k, l, i, "replaced", nm) for (k, l, i), nm in built.replaced.items()]
    units += [(k, l, i, "added", nm) for (k, l, i), nm in built.added.items()]
    text = built.spec.text or built.spec.to_yaml()
    return hb.save_evaluation(book, built.spec.name, text, result.evaluation.to_dict(), units,
                              model.fingerprint() if model is not None else None, corpus, run_key)
