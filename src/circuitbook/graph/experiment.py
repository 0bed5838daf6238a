"""Experiments on graph nodes: ablate (zero / mean / resample), patch from another prompt, or steer.

    zero, mean     :func:`.intervene.ablate` (its module docstring says what each node kind replaces)
    resample       each member's activation at its position is replaced by the same unit's activation at
                   another position of the same prompt (seeded permutation), the graph-level analogue of
                   ``handcraft.splice.resample_interventions``
    patch          each member's activation at its position is replaced by the unit's activation at the
                   same position in ``other`` (another prompt, at least as long up to that position)
    steer          each member's activation at its position is multiplied by ``scale``

Resample / patch / steer act on unit nodes through their kind's tap (``circuitbook.units``: the activation
``tap`` and ``unit_axis``); a head node "head/l/h/q/k" acts on the head's whole output at q (all its
sources). :func:`run_test` returns an :class:`~.intervene.InterventionResult` (target logit and
log-probability before and after, and the top tokens) for every kind.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from ..units import kind_names, unit_kind
from .intervene import InterventionResult, ablate
from .predictions import top_tokens
from .prompt import position, prompt_tokens, resolve_token, token_str, weights_of
from .types import GraphError

KINDS = ("zero", "mean", "resample", "patch", "steer")


def _unit_sites(node_ids: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    """{tap name: [(position, unit index)]} for unit node ids "kind/layer/idx/pos[/src]"."""
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for nid in node_ids:
        parts = nid.split("/")
        if parts[0] not in kind_names() or len(parts) < 4:
            raise GraphError(f"node {nid!r}: resample, patch and steer act on unit nodes (kind/layer/idx/pos), "
                             f"not on inputs or the logit")
        try:
            layer, idx, pos = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            raise GraphError(f"cannot read node id {nid!r}") from None
        k = unit_kind(parts[0])
        if k.unit_axis != 2:
            raise GraphError(f"{parts[0]} units are not on axis 2 of their tap; cannot patch them")
        out[k.tap_name(layer)].append((pos, idx))
    return out


def run_test(model, prompt, node_ids: Sequence[str], target: int | str | None = None, *, pos: int = -1,
             contrast: int | str | None = None, how: str = "zero", other: str | None = None,
             scale: float = 0.0, seed: int = 0, k: int = 5) -> InterventionResult:
    """Intervene on ``node_ids`` together (``how`` in KINDS; see the module docstring) and re-run."""
    from ..model.forward import run

    if how not in KINDS:
        raise GraphError(f"experiment kind must be one of {', '.join(KINDS)}, not {how!r}")
    if not node_ids:
        raise GraphError("the experiment names no nodes")
    if how in ("zero", "mean"):
        return ablate(model, prompt, list(node_ids), target, pos=pos, contrast=contrast, mode=how, k=k)
    w = weights_of(model)
    toks = prompt_tokens(model, prompt)
    T = toks.numel()
    p = position(pos, T)
    sites = _unit_sites(node_ids)
    for tap, ss in sites.items():
        for q, _ in ss:
            if not 0 <= q < T:
                raise GraphError(f"position {q} is outside the prompt's {T} tokens")
    donor = None
    if how == "patch":
        if not other:
            raise GraphError("a patch experiment needs the other prompt to patch from")
        otoks = prompt_tokens(model, other)
        need = max(q for ss in sites.values() for q, _ in ss)
        if otoks.numel() <= need:
            raise GraphError(f"the patch prompt has {otoks.numel()} tokens; it needs position {need}")
        donor = {k_: v[0] for k_, v in run(w, otoks[None], tuple(sites)).items()}
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(T, generator=g)

    def make(tap, ss):
        def fn(x):
            x = x.clone()
            for q, i in ss:
                if how == "steer":
                    x[:, q, i] = x[:, q, i] * scale
                elif how == "patch":
                    x[:, q, i] = donor[tap][q, i].to(x.dtype)
                else:
                    x[:, q, i] = x[:, int(perm[q]), i]
            return x
        return fn

    W_U, b_U = w.W_U.float(), w.b_U.float()

    def final(iv):
        x = run(w, toks[None], ("ln_final.hook_normalized",), iv)["ln_final.hook_normalized"][0, p]
        return x.float() @ W_U + b_U

    before = final(None)
    tgt = int(before.argmax()) if target is None else resolve_token(model, target)
    ctr = resolve_token(model, contrast, "contrast") if contrast is not None else None
    after = final({tap: make(tap, ss) for tap, ss in sites.items()})

    def val(lg):
        return float(lg[tgt] - (lg[ctr] if ctr is not None else 0.0))

    return InterventionResult(
        target=tgt, target_str=token_str(model, tgt), contrast=ctr, pos=p, mode=how, ablations=list(node_ids),
        logit_before=val(before), logit_after=val(after), delta=val(after) - val(before),
        logprob_before=float(before.log_softmax(-1)[tgt]), logprob_after=float(after.log_softmax(-1)[tgt]),
        top_before=top_tokens(before, model, k), top_after=top_tokens(after, model, k))
