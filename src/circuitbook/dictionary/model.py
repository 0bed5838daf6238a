"""A dictionary (transcoder, skip-transcoder or SAE): encode to sparse features, decode back.

Parameters use SAELens 6's layout and names (so its files load without transposes):

    W_enc  [d_in, d_sae]    b_enc [d_sae]     pre = x @ W_enc + b_enc
    W_dec  [d_sae, d_out]   b_dec [d_out]     y_hat = f @ W_dec + b_dec (+ x @ W_skip.T)
    W_skip [d_out, d_in]    skip-transcoders only
    threshold [d_sae]       JumpReLU only

Activations: "topk" keeps each token's k largest pre-activations and applies ReLU to them (SAELens's
TopK); "relu" is ReLU; "jumprelu" is ReLU(pre) where pre > threshold, else 0. Nothing is subtracted from
the input (SAELens ``apply_b_dec_to_input = False``). Decoder rows are kept unit-norm by the trainer, so a
feature's activation is the length of what it writes.

TopK dictionaries also have a sparse path (:meth:`Dictionary.topk_codes` + :meth:`Dictionary.decode_sparse`):
the k (value, index) pairs per token and an ``embedding_bag`` decode, so training never materialises the
[batch, d_sae] gradient (the trainer's speed comes from this).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DictionaryConfig, DictionaryError


class _GatherPre(torch.autograd.Function):
    """vals[b, j] = pre[b, idx[b, j]] where pre = x @ W_enc + b_enc was computed without a graph; the backward
    sends gradients only to the gathered columns of W_enc / b_enc (index_add, never a dense [B, d_sae])."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor, pre: Tensor) -> Tensor:
        ctx.save_for_backward(x, idx)
        ctx.shape = W_enc.shape
        return pre.gather(-1, idx).float()

    @staticmethod
    def backward(ctx, g: Tensor):
        x, idx = ctx.saved_tensors
        d_in, d_sae = ctx.shape
        g = g.float()
        gb = torch.zeros(d_sae, dtype=torch.float32, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
        gwT = torch.zeros(d_sae, d_in, dtype=torch.float32, device=g.device)
        step = max(1, (1 << 22) // max(1, idx.shape[1] * d_in))  # rows per chunk: ~16 MB of products
        xf = x.float()
        for s in range(0, x.shape[0], step):
            gi, xi, ii = g[s:s + step], xf[s:s + step], idx[s:s + step]
            gwT.index_add_(0, ii.reshape(-1), (gi[..., None] * xi[:, None, :]).reshape(-1, d_in))
        return None, gwT.T, gb, None, None


class Dictionary(nn.Module):
    """One dictionary. ``cfg`` says its kind, shape and activation; parameters are float32."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if cfg.skip else None
        self.threshold = nn.Parameter(torch.zeros(d_sae)) if cfg.activation == "jumprelu" else None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_tensors(cls, cfg: DictionaryConfig, tensors: dict[str, Tensor], source: str = "weights") -> "Dictionary":
        """A dictionary from {name: tensor} in the layout above; shapes are checked against ``cfg``."""
        d = cls(cfg)
        want = {name: tuple(p.shape) for name, p in d.named_parameters()}
        missing = sorted(set(want) - set(tensors))
        if missing:
            raise DictionaryError(f"{source}: missing tensor(s) {', '.join(missing)} for a {cfg.kind} "
                                  f"({cfg.activation})")
        for name, shape in want.items():
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise DictionaryError(f"{source}: {name} has shape {tuple(t.shape)}, expected {shape} "
                                      f"(d_in {cfg.d_in}, d_sae {cfg.d_sae}, d_out {cfg.d_out})")
            if not torch.isfinite(t.float()).all():
                raise DictionaryError(f"{source}: {name} holds NaN or infinite values")
            getattr(d, name).data.copy_(t.float())
        return d

    def tensors(self) -> dict[str, Tensor]:
        """{name: tensor} (detached, contiguous, float32) in SAELens's layout."""
        return {n: p.detach().float().contiguous() for n, p in self.named_parameters()}

    def init_weights(self, generator: torch.Generator) -> None:
        """Random unit-norm decoder rows, zero biases (and skip). An SAE's encoder starts as the decoder's
        transpose (it reads the space it writes: Gao et al. 2024); a transcoder's encoder starts as independent
        random unit columns, because it reads the MLP's input and writes its output, two different spaces: a
        tied start makes every feature read the direction it writes, and with tied embeddings an
        under-trained feature then "promotes the token it reads" (content) for no reason in the model."""
        W = torch.randn(self.cfg.d_sae, self.cfg.d_out, generator=generator)
        W /= W.norm(dim=1, keepdim=True)
        with torch.no_grad():
            self.W_dec.copy_(W)
            if self.cfg.kind == "sae" and self.cfg.d_in == self.cfg.d_out:
                enc = W.T.clone()
            else:
                enc = torch.randn(self.cfg.d_in, self.cfg.d_sae, generator=generator)
                enc /= enc.norm(dim=0, keepdim=True)
            self.W_enc.copy_(enc)
            self.b_enc.zero_()
            self.b_dec.zero_()
            if self.W_skip is not None:
                self.W_skip.zero_()

    # ---------------------------------------------------------------- the maths
    def pre(self, x: Tensor) -> Tensor:
        """Pre-activations [..., d_sae]."""
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Dense feature activations from pre-activations."""
        a = self.cfg.activation
        if a == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        if a == "relu":
            return pre.relu()
        return pre.relu() * (pre > self.threshold).to(pre.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations [..., d_sae] (dense)."""
        self.check_input(x)
        return self.activate(self.pre(x))

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """Output [..., d_out] from dense activations; skip-transcoders also need the input ``x``."""
        y = f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return y + self._skip(x)

    def _skip(self, x: Tensor | None):
        if self.W_skip is None:
            return 0.0
        if x is None:
            raise DictionaryError("a skip-transcoder's decode needs its input x")
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)

    # ---------------------------------------------------------------- sparse TopK path
    def topk_codes(self, x: Tensor, pre_dtype: torch.dtype = torch.float32,
                   dead: Tensor | None = None, aux_k: int = 0):
        """(vals [B, k], idx [B, k]) of the TopK activations, differentiable w.r.t. W_enc / b_enc through the
        gathered entries only; with ``dead`` (bool [d_sae]) and ``aux_k`` also the top ``aux_k`` dead
        features' (vals, idx) for AuxK (else None). ``pre_dtype`` is the dense encoder matmul's precision."""
        with torch.no_grad():
            pre = (x.to(pre_dtype) @ self.W_enc.to(pre_dtype)).float() + self.b_enc
            idx = pre.topk(self.cfg.k, dim=-1, sorted=False).indices
            aux = None
            if dead is not None and aux_k > 0:
                aux_idx = pre.masked_fill(~dead, -math.inf).topk(aux_k, dim=-1, sorted=False).indices
                aux = aux_idx
        vals = _GatherPre.apply(x, self.W_enc, self.b_enc, idx, pre).relu()
        if aux is None:
            return vals, idx, None
        aux_vals = _GatherPre.apply(x, self.W_enc, self.b_enc, aux, pre).relu()
        return vals, idx, (aux_vals, aux)

    def decode_sparse(self, vals: Tensor, idx: Tensor, x: Tensor | None = None, bias: bool = True) -> Tensor:
        """sum_j vals[b, j] W_dec[idx[b, j]] (+ b_dec + skip): the decode of k (value, index) pairs per row."""
        y = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals.to(self.W_dec.dtype), mode="sum")
        if bias:
            y = y + self.b_dec + self._skip(x)
        return y

    # ---------------------------------------------------------------- upkeep
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the part of W_dec's gradient along each (unit) row, so a step keeps rows unit-norm
        to first order."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    def check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise DictionaryError(f"input has width {x.shape[-1]} but the dictionary reads d_in={self.cfg.d_in}")

    @torch.no_grad()
    def fold_scales(self, s_in: float, s_out: float) -> None:
        """Turn a dictionary trained on x*s_in -> y*s_out into one on raw x -> y, keeping decoder rows unit:
        features are divided by s_out (TopK/ReLU commute with positive scaling)."""
        self.W_enc.mul_(s_in / s_out)
        self.b_enc.div_(s_out)
        self.b_dec.div_(s_out)
        if self.W_skip is not None:
            self.W_skip.mul_(s_in / s_out)
        if self.threshold is not None:
            self.threshold.div_(s_out)
