"""Ablate graph nodes and re-run the model: how much does the target logit move, what does it predict now?

What each ablation replaces (``mode="zero"``: with 0; ``mode="mean"``: with the mean of the same
activation over this prompt's positions):

    neuron l,i at positions P     blocks.{l}.mlp.hook_post[:, P, i]
    head   l,h at positions P     blocks.{l}.attn.hook_z[:, P, h]          (the head's whole output there)
    head   l,h at q from src k    the term pattern[h, q, k] * v[k, h] of z[q, h]: zero removes it (the
                                  pattern is not renormalised); mean swaps v[k, h] for its mean over positions
    input  at positions P         hook_embed[:, P] and hook_pos_embed[P] (the token + positional embedding)

``positions=None`` means every position. Ablations are applied together in one forward, through
``circuitbook.model.forward.run``'s ``interventions``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..units import unit_kind
from .prompt import position, prompt_tokens, resolve_token, token_str, weights_of
from .types import GraphError
from .predictions import top_tokens


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One node to knock out. ``kind``: "neuron" | "head" | "input"; ``layer`` (-1 for inputs);
    ``index``: neuron or head index (unused for inputs); ``positions``: positions to ablate at (neurons,
    heads: where the unit writes / the query positions; inputs: which tokens), None for all;
    ``src``: heads only, ablate just the read from this source position."""

    kind: str
    layer: int = -1
    index: int = 0
    positions: tuple[int, ...] | None = None
    src: int | None = None

    @classmethod
    def from_node_id(cls, node_id: str) -> "Ablation":
        """Graph node ids -> ablations: "neuron/l/i/q", "neuron/l/i" (all positions), "head/l/h/q/k"
        (one source), "head/l/h/q", "head/l/h" (all positions), "input/k"."""
        parts = node_id.strip().split("/")
        try:
            kind, nums = parts[0], [int(x) for x in parts[1:]]
        except ValueError:
            raise GraphError(f"cannot read node id {node_id!r}") from None
        shapes = {"neuron": (2, 3), "head": (2, 3, 4), "input": (1,)}
        if kind not in shapes or len(nums) not in shapes[kind]:
            raise GraphError(f"cannot ablate node {node_id!r}; ids look like 'neuron/L/I/POS', 'neuron/L/I', "
                             f"'head/L/H/Q/K', 'head/L/H/Q', 'head/L/H' or 'input/POS'")
        if kind == "input":
            return cls("input", -1, 0, (nums[0],))
        pos = (nums[2],) if len(nums) > 2 else None
        return cls(kind, nums[0], nums[1], pos, nums[3] if len(nums) > 3 else None)

    def describe(self) -> str:
        at = "all positions" if self.positions is None else "pos " + ",".join(map(str, self.positions))
        if self.kind == "input":
            return f"input {at}"
        src = f" from src {self.src}" if self.src is not None else ""
        return f"{self.kind} L{self.layer}.{self.index} at {at}{src}"


@dataclasses.dataclass
class InterventionResult:
    """Target logit (or logit difference) at ``pos`` before and after the ablations.

    ``delta`` = ``logit_after - logit_before``; ``logprob_*``: log-probability of ``target`` at pos;
    ``top_before`` / ``top_after``: [(token id, string, probability, logit)], most probable first.
    """

    target: int
    target_str: str
    contrast: int | None
    pos: int
    mode: str
    ablations: list[str]
    logit_before: float
    logit_after: float
    delta: float
    logprob_before: float
    logprob_after: float
    top_before: list[tuple[int, str, float, float]]
    top_after: list[tuple[int, str, float, float]]


def _check(w, a: Ablation, n_pos: int) -> None:
    cfg = w.cfg
    if a.kind not in ("neuron", "head", "input"):
        raise GraphError(f"cannot ablate a {a.kind!r}; kinds are neuron, head, input")
    if a.kind != "input":
        if not 0 <= a.layer < cfg.n_layers:
            raise GraphError(f"layer {a.layer} does not exist (the model has {cfg.n_layers})")
        size = unit_kind(a.kind).count(cfg, a.layer)
        if not 0 <= a.index < size:
            raise GraphError(f"{a.kind} {a.index} does not exist in layer {a.layer} (it has {size})")
    for p in a.positions or ():
        if not 0 <= p < n_pos:
            raise GraphError(f"position {p} is outside the prompt's {n_pos} tokens")
    if a.src is not None:
        if a.kind != "head":
            raise GraphError("only heads take a source position")
        if not 0 <= a.src < n_pos:
            raise GraphError(f"source position {a.src} is outside the prompt's {n_pos} tokens")
        if a.positions is not None and any(a.src > q for q in a.positions):
            raise GraphError(f"source position {a.src} comes after query position(s) {a.positions}: "
                             f"a causal head cannot read it")


def _interventions(w, ablations: Sequence[Ablation], mode: str) -> dict[str, Callable[[Tensor], Tensor]]:
    """Build {hook name: fn}; several ablations on one hook compose in order."""
    fns: dict[str, list[Callable[[Tensor], Tensor]]] = defaultdict(list)
    stash: dict[str, Tensor] = {}
    stashed: set[str] = set()

    def sl(positions):
        return slice(None) if positions is None else list(positions)

    def keep(name):
        def fn(x):
            stash[name] = x
            return x
        return fn

    for a in ablations:
        P = sl(a.positions)
        if a.kind == "neuron":
            def f(x, i=a.index, P=P):
                x = x.clone()
                x[:, P, i] = 0.0 if mode == "zero" else x[:, :, i].mean(1, keepdim=True)
                return x
            fns[f"blocks.{a.layer}.mlp.hook_post"].append(f)
        elif a.kind == "head" and a.src is None:
            def f(x, h=a.index, P=P):
                x = x.clone()
                x[:, P, h] = 0.0 if mode == "zero" else x[:, :, h].mean(1, keepdim=True)
                return x
            fns[f"blocks.{a.layer}.attn.hook_z"].append(f)
        elif a.kind == "head":
            base = f"blocks.{a.layer}.attn."
            if base not in stashed:  # remember v and the pattern as the head uses them
                stashed.add(base)
                fns[base + "hook_v"].append(keep(base + "hook_v"))
                fns[base + "hook_pattern"].append(keep(base + "hook_pattern"))

            def f(z, h=a.index, P=P, k=a.src, base=base):
                patt, v = stash[base + "hook_pattern"][:, h, :, k], stash[base + "hook_v"][:, :, h]  # [b, q], [b, p, e]
                repl = torch.zeros_like(v[:, k]) if mode == "zero" else v.mean(1)
                z = z.clone()
                z[:, P, h] += (patt[:, P, None] * (repl - v[:, k])[:, None]).to(z.dtype)
                return z
            fns[base + "hook_z"].append(f)
        else:
            def f(x, P=P):
                x = x.clone()
                x[..., P, :] = 0.0 if mode == "zero" else x.mean(-2, keepdim=True)
                return x
            fns["hook_embed"].append(f)
            if w.W_pos is not None:
                fns["hook_pos_embed"].append(f)

    def chain(fs):
        def fn(x):
            for g in fs:
                x = g(x)
            return x
        return fn

    return {k: chain(v) for k, v in fns.items()}


def ablate(model, prompt, nodes: Ablation | str | Sequence[Ablation | str], target: int | str | None = None, *,
           pos: int = -1, contrast: int | str | None = None, mode: str = "zero", k: int = 5) -> InterventionResult:
    """Knock out ``nodes`` (Ablations or graph node ids) together and re-run ``prompt``.

    ``target``: token id or one-token string (None: the unablated model's top prediction at ``pos``);
    ``contrast``: measure logit[target] - logit[contrast]; ``mode``: "zero" or "mean" (see module doc).
    """
    from ..model.forward import run

    if mode not in ("zero", "mean"):
        raise GraphError(f"mode must be 'zero' or 'mean', not {mode!r}")
    w = weights_of(model)
    toks = prompt_tokens(model, prompt)
    p = position(pos, toks.numel())
    if isinstance(nodes, (str, Ablation)):
        nodes = [nodes]
    abl = [Ablation.from_node_id(n) if isinstance(n, str) else n for n in nodes]
    if not abl:
        raise GraphError("nothing to ablate")
    for a in abl:
        _check(w, a, toks.numel())
    for a in abl:  # head-from-source ablations at all positions: only queries that can see the source
        if a.kind == "head" and a.src is not None and a.positions is None:
            abl[abl.index(a)] = dataclasses.replace(a, positions=tuple(range(a.src, toks.numel())))

    W_U, b_U = w.W_U.float(), w.b_U.float()

    def final(interventions):
        x = run(w, toks[None], ("ln_final.hook_normalized",), interventions)["ln_final.hook_normalized"][0, p]
        return x.float() @ W_U + b_U  # one position's logits only

    before = final(None)
    tgt = int(before.argmax()) if target is None else resolve_token(model, target)
    ctr = resolve_token(model, contrast, "contrast") if contrast is not None else None
    after = final(_interventions(w, abl, mode))

    def val(lg):
        return float(lg[tgt] - (lg[ctr] if ctr is not None else 0.0))

    return InterventionResult(
        target=tgt, target_str=token_str(model, tgt), contrast=ctr, pos=p, mode=mode,
        ablations=[a.describe() for a in abl], logit_before=val(before), logit_after=val(after),
        delta=val(after) - val(before), logprob_before=float(before.log_softmax(-1)[tgt]),
        logprob_after=float(after.log_softmax(-1)[tgt]), top_before=top_tokens(before, model, k),
        top_after=top_tokens(after, model, k),
    )
