"""Prompts and tokens for the graph stage: text or ids -> checked token ids, token strings, positions.

Public helpers shared by :mod:`.attribution`, :mod:`.intervene` and :mod:`.predictions`; every bad input
(empty prompt, ids outside the vocabulary, too long for the context, a target that is not one token, a
position outside the prompt) raises :class:`~.types.GraphError` naming the problem.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .types import GraphError


def weights_of(model):
    """The bare :class:`~circuitbook.model.Weights` of a Model (or the Weights themselves)."""
    return model.weights if hasattr(model, "weights") else model


def prompt_tokens(model, prompt: str | Sequence[int] | Tensor, bos: bool = True) -> Tensor:
    """Prompt (text, id list or tensor [pos] / [1, pos]) -> int64 ids [pos] on the model's device."""
    w = weights_of(model)
    if isinstance(prompt, str):
        if getattr(model, "tokenizer", None) is None:
            raise GraphError("this model has no tokenizer; pass token ids instead of text")
        if not prompt:
            raise GraphError("empty prompt")
        toks = model.to_tokens(prompt, bos=bos)[0]
    else:
        toks = torch.as_tensor(prompt, dtype=torch.long).flatten() if not isinstance(prompt, Tensor) \
            else prompt.flatten().long()
    if toks.numel() == 0:
        raise GraphError("empty prompt (no tokens)")
    if int(toks.min()) < 0 or int(toks.max()) >= w.cfg.d_vocab:
        raise GraphError(f"token ids must lie in [0, {w.cfg.d_vocab}); got {toks.min().item()}..{toks.max().item()}")
    n_ctx = w.W_pos.shape[0] if w.W_pos is not None else w.cfg.n_ctx
    if toks.numel() > n_ctx:
        raise GraphError(f"prompt has {toks.numel()} tokens; the model takes at most {n_ctx}")
    return toks.to(w.device)


def resolve_token(model, token: int | str, what: str = "target") -> int:
    """A token id, or a string that encodes to exactly one token (GPT-2 tokens usually start with a space)."""
    w = weights_of(model)
    if isinstance(token, str):
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise GraphError(f"{what} {token!r}: this model has no tokenizer; give a token id")
        ids = tok.encode(token)
        if len(ids) != 1:
            raise GraphError(f"{what} {token!r} is {len(ids)} tokens {ids}, not one; give a single token "
                             f"(GPT-2-style tokens usually start with a space, e.g. ' cat') or its id")
        token = ids[0]
    token = int(token)
    if not 0 <= token < w.cfg.d_vocab:
        raise GraphError(f"{what} token id {token} is outside the vocabulary [0, {w.cfg.d_vocab})")
    return token


def token_str(model, i: int) -> str:
    """Token id -> its string (``"<id>"`` when the model has no tokenizer or the id is past its vocabulary)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or i >= tok.vocab_size:
        return f"<{i}>"
    return tok.token_str(i)


def position(pos: int, n: int) -> int:
    """A position in a prompt of ``n`` tokens (negative counts from the end) -> 0..n-1, or GraphError."""
    p = pos + n if pos < 0 else pos
    if not 0 <= p < n:
        raise GraphError(f"position {pos} is outside the prompt's {n} tokens")
    return p
