"""Per-position next-token predictions for a prompt: what the model expects after each token."""

from __future__ import annotations

import dataclasses

import torch

from .prompt import prompt_tokens, token_str, weights_of


@dataclasses.dataclass
class Prediction:
    """The model's guess after ``token`` at position ``pos`` (it predicts position pos + 1).

    ``top``: [(token id, token string, probability, logit)], ``k`` entries, most probable first.
    ``next_token`` / ``next_str`` / ``next_prob`` / ``next_rank``: the prompt's actual next token, its
    probability and 0-based rank among all tokens (None at the last position).
    ``entropy``: of the next-token distribution, in nats.
    """

    pos: int
    token: int
    token_str: str
    top: list[tuple[int, str, float, float]]
    next_token: int | None
    next_str: str | None
    next_prob: float | None
    next_rank: int | None
    entropy: float


def predict(model, prompt, k: int = 5) -> list[Prediction]:
    """Top-``k`` next-token predictions at every position of ``prompt`` (text, BOS prepended, or ids),
    in position order."""
    from ..model.forward import run

    toks = prompt_tokens(model, prompt)
    logits = run(weights_of(model), toks[None], ("logits",))["logits"][0].float()  # [pos, d_vocab]
    logp = logits.log_softmax(-1)
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    ids = toks.tolist()
    out = []
    for p, t in enumerate(ids):
        nxt = ids[p + 1] if p + 1 < len(ids) else None
        rank = int((logp[p] > logp[p, nxt]).sum()) if nxt is not None else None
        out.append(Prediction(
            pos=p, token=t, token_str=token_str(model, t),
            top=[(int(i), token_str(model, int(i)), float(lp.exp()), float(logits[p, i]))
                 for lp, i in zip(top.values[p], top.indices[p])],
            next_token=nxt, next_str=token_str(model, nxt) if nxt is not None else None,
            next_prob=float(logp[p, nxt].exp()) if nxt is not None else None, next_rank=rank,
            entropy=float(entropy[p]),
        ))
    return out


def top_tokens(logits: torch.Tensor, model, k: int = 5) -> list[tuple[int, str, float, float]]:
    """[(id, string, probability, logit)] for one logit vector [d_vocab], most probable first."""
    logits = logits.float()
    lp = logits.log_softmax(-1)
    v, i = lp.topk(min(k, lp.numel()))
    return [(int(j), token_str(model, int(j)), float(x.exp()), float(logits[j])) for x, j in zip(v, i)]
