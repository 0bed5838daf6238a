"""Arch-neutral weights with TransformerLens names, and the processing that keeps log-probs unchanged.

Orientation: every matrix multiplies activations from the right (``x @ W``), so the *reading* side is
the first axis after layer/head and the *writing* side is the last. Per-layer tensors are stacked on a
leading ``n_layers`` axis; heads are the next axis, in the checkpoint's head order.

    W_E     [d_vocab, d_model]          W_pos  [n_ctx, d_model]  (None for rotary models)
    W_Q/W_K/W_V [n_layers, n_heads, d_model, d_head]   b_Q/b_K/b_V [n_layers, n_heads, d_head]
    W_O     [n_layers, n_heads, d_head, d_model]       b_O [n_layers, d_model]
    W_in    [n_layers, d_model, d_mlp]  b_in  [n_layers, d_mlp]
    W_gate  [n_layers, d_model, d_mlp]  (gated MLPs only; act(x@W_gate) * (x@W_in))
    W_out   [n_layers, d_mlp, d_model]  b_out [n_layers, d_model]
    ln1_w/ln1_b/ln2_w/ln2_b [n_layers, d_model]; lnf_w/lnf_b [d_model] (RMS norms keep zero biases)
    W_U     [d_model, d_vocab]          b_U   [d_vocab]

Grouped-query K/V heads are stored expanded to ``n_heads`` (head h reads kv head h // group), so every
analysis can index heads uniformly; export collapses them back.
Biases an architecture lacks are stored as zeros, so one forward serves all architectures.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from .config import ModelConfig

_TENSOR_FIELDS = (
    "W_E", "W_pos", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O",
    "ln1_w", "ln1_b", "ln2_w", "ln2_b", "W_in", "b_in", "W_gate", "W_out", "b_out",
    "lnf_w", "lnf_b", "W_U", "b_U",
)


@dataclasses.dataclass
class Weights:
    cfg: ModelConfig
    W_E: Tensor
    W_pos: Optional[Tensor]
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    b_Q: Tensor
    b_K: Tensor
    b_V: Tensor
    W_O: Tensor
    b_O: Tensor
    ln1_w: Tensor
    ln1_b: Tensor
    ln2_w: Tensor
    ln2_b: Tensor
    W_in: Tensor
    b_in: Tensor
    W_gate: Optional[Tensor]
    W_out: Tensor
    b_out: Tensor
    lnf_w: Tensor
    lnf_b: Tensor
    W_U: Tensor
    b_U: Tensor
    processing: tuple[str, ...] = ()  # which log-prob-preserving transforms have been applied, in order

    # ---------------------------------------------------------------- utilities
    def tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in _TENSOR_FIELDS if getattr(self, k) is not None}

    def replace(self, **changes) -> "Weights":
        return dataclasses.replace(self, **changes)

    def clone(self) -> "Weights":
        return self.replace(**{k: v.clone() for k, v in self.tensors().items()})

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> "Weights":
        return self.replace(**{k: v.to(device=device, dtype=dtype) for k, v in self.tensors().items()})

    @property
    def dtype(self) -> torch.dtype:
        return self.W_E.dtype

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    def n_params(self) -> int:
        return sum(v.numel() for v in self.tensors().values())

    # ---------------------------------------------------------------- processing
    def fold_ln(self) -> "Weights":
        """Fold each norm's weight and bias into the matrices that read from it.

        LN(x) = w * normalize(x) + b feeds x' @ W + c, so W' = diag(w) @ W and c' = c + b @ W; the norm is
        left as a pure normalization (w = 1, b = 0). Exact for LayerNorm and RMSNorm alike.
        """
        w = self.clone()
        for l in range(self.cfg.n_layers):
            g, b = w.ln1_w[l], w.ln1_b[l]
            for W, B in ((w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V)):
                B[l] += torch.einsum("d,hde->he", b, W[l])
                W[l] *= g[None, :, None]
            g, b = w.ln2_w[l], w.ln2_b[l]
            w.b_in[l] += b @ w.W_in[l]
            w.W_in[l] *= g[:, None]
            if w.W_gate is not None:
                if b.any():
                    raise NotImplementedError("gated MLP after a biased norm (no gate bias to fold into)")
                w.W_gate[l] *= g[:, None]
            w.ln1_w[l], w.ln1_b[l], w.ln2_w[l], w.ln2_b[l] = 1.0, 0.0, 1.0, 0.0
        w.b_U += w.lnf_b @ w.W_U
        w.W_U *= w.lnf_w[:, None]
        w.lnf_w[:], w.lnf_b[:] = 1.0, 0.0
        return w.replace(processing=self.processing + ("fold_ln",))

    def center_writing_weights(self) -> "Weights":
        """Remove the mean over d_model from everything that writes to the residual stream.

        Only valid when every reader is a LayerNorm (which subtracts the mean anyway); RMSNorm is not.
        """
        if self.cfg.norm != "LN":
            raise ValueError("center_writing_weights needs LayerNorm; this model uses RMSNorm")
        w = self.clone()
        centre = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731
        w.W_E, w.W_O, w.b_O, w.W_out, w.b_out = map(centre, (w.W_E, w.W_O, w.b_O, w.W_out, w.b_out))
        if w.W_pos is not None:
            w.W_pos = centre(w.W_pos)
        return w.replace(processing=self.processing + ("center_writing_weights",))

    def center_unembed(self) -> "Weights":
        """Subtract the mean logit direction: shifts every logit by the same amount, log-probs unchanged."""
        w = self.clone()
        w.W_U = w.W_U - w.W_U.mean(-1, keepdim=True)
        w.b_U = w.b_U - w.b_U.mean()
        return w.replace(processing=self.processing + ("center_unembed",))

    def processed(self, fold_ln=True, center_writing=True, center_unembed=True) -> "Weights":
        """The usual analysis basis (TransformerLens' defaults); center_writing is skipped for RMS models."""
        w = self
        if fold_ln:
            w = w.fold_ln()
        if center_writing and self.cfg.norm == "LN":
            w = w.center_writing_weights()
        if center_unembed:
            w = w.center_unembed()
        return w


def _split_heads_in(W: Tensor, n_heads: int) -> Tensor:
    """Linear weight [n_heads*d_head, d_model] (out, in) -> [n_heads, d_model, d_head]."""
    out, d_model = W.shape
    return W.reshape(n_heads, out // n_heads, d_model).transpose(1, 2)


def _merge_heads_in(W: Tensor) -> Tensor:
    """[n_heads, d_model, d_head] -> Linear weight [n_heads*d_head, d_model]."""
    h, d, e = W.shape
    return W.transpose(1, 2).reshape(h * e, d)


def from_hf_state_dict(cfg: ModelConfig, sd: dict[str, Tensor], dtype=torch.float32) -> Weights:
    """Map a Hugging Face state dict (GPT-Neo, GPT-2 or Llama naming) onto :class:`Weights`."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    L, H, d, e, m = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    missing = []

    def get(name):
        if name not in sd:
            missing.append(name)
            return None
        return sd[name].to(dtype)

    zeros = lambda *s: torch.zeros(*s, dtype=dtype)  # noqa: E731
    layers = []
    if cfg.arch == "gpt_neo":
        p = "transformer."
        W_E, W_pos = get(p + "wte.weight"), get(p + "wpe.weight")
        for l in range(L):
            q = f"{p}h.{l}."
            a = q + "attn.attention."
            layers.append(dict(
                W_Q=_split_heads_in(get(a + "q_proj.weight"), H), W_K=_split_heads_in(get(a + "k_proj.weight"), H),
                W_V=_split_heads_in(get(a + "v_proj.weight"), H), b_Q=zeros(H, e), b_K=zeros(H, e), b_V=zeros(H, e),
                W_O=get(a + "out_proj.weight").T.reshape(H, e, d), b_O=get(a + "out_proj.bias"),
                ln1_w=get(q + "ln_1.weight"), ln1_b=get(q + "ln_1.bias"),
                ln2_w=get(q + "ln_2.weight"), ln2_b=get(q + "ln_2.bias"),
                W_in=get(q + "mlp.c_fc.weight").T, b_in=get(q + "mlp.c_fc.bias"),
                W_out=get(q + "mlp.c_proj.weight").T, b_out=get(q + "mlp.c_proj.bias"),
            ))
        lnf_w, lnf_b = get(p + "ln_f.weight"), get(p + "ln_f.bias")
        W_U = sd["lm_head.weight"].to(dtype).T if "lm_head.weight" in sd and not cfg.tie_embeddings else None
    elif cfg.arch == "gpt2":
        p = "transformer." if "transformer.wte.weight" in sd else ""
        W_E, W_pos = get(p + "wte.weight"), get(p + "wpe.weight")
        for l in range(L):
            q = f"{p}h.{l}."
            c_attn, c_attn_b = get(q + "attn.c_attn.weight"), get(q + "attn.c_attn.bias")  # Conv1D: [in, out]
            Wq, Wk, Wv = c_attn.split(d, dim=1)
            bq, bk, bv = c_attn_b.split(d)
            heads = lambda W: W.reshape(d, H, e).transpose(0, 1)  # noqa: E731
            layers.append(dict(
                W_Q=heads(Wq), W_K=heads(Wk), W_V=heads(Wv),
                b_Q=bq.reshape(H, e), b_K=bk.reshape(H, e), b_V=bv.reshape(H, e),
                W_O=get(q + "attn.c_proj.weight").reshape(H, e, d), b_O=get(q + "attn.c_proj.bias"),
                ln1_w=get(q + "ln_1.weight"), ln1_b=get(q + "ln_1.bias"),
                ln2_w=get(q + "ln_2.weight"), ln2_b=get(q + "ln_2.bias"),
                W_in=get(q + "mlp.c_fc.weight"), b_in=get(q + "mlp.c_fc.bias"),
                W_out=get(q + "mlp.c_proj.weight"), b_out=get(q + "mlp.c_proj.bias"),
            ))
        lnf_w, lnf_b = get(p + "ln_f.weight"), get(p + "ln_f.bias")
        W_U = sd["lm_head.weight"].to(dtype).T if "lm_head.weight" in sd and not cfg.tie_embeddings else None
    else:  # llama
        W_E, W_pos = get("model.embed_tokens.weight"), None
        G = H // cfg.n_kv_heads
        for l in range(L):
            q = f"model.layers.{l}."
            a = q + "self_attn."
            kv = lambda n: _split_heads_in(get(a + n), cfg.n_kv_heads).repeat_interleave(G, 0)  # noqa: E731
            layers.append(dict(
                W_Q=_split_heads_in(get(a + "q_proj.weight"), H), W_K=kv("k_proj.weight"), W_V=kv("v_proj.weight"),
                b_Q=zeros(H, e), b_K=zeros(H, e), b_V=zeros(H, e),
                W_O=get(a + "o_proj.weight").T.reshape(H, e, d), b_O=zeros(d),
                ln1_w=get(q + "input_layernorm.weight"), ln1_b=zeros(d),
                ln2_w=get(q + "post_attention_layernorm.weight"), ln2_b=zeros(d),
                W_in=get(q + "mlp.up_proj.weight").T, b_in=zeros(m), W_gate=get(q + "mlp.gate_proj.weight").T,
                W_out=get(q + "mlp.down_proj.weight").T, b_out=zeros(d),
            ))
        lnf_w, lnf_b = get("model.norm.weight"), zeros(d)
        W_U = sd["lm_head.weight"].to(dtype).T if "lm_head.weight" in sd and not cfg.tie_embeddings else None
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors for {cfg.arch}, e.g. {missing[:4]}")
    if W_U is None:
        if not cfg.tie_embeddings:
            raise KeyError("checkpoint has no lm_head.weight and tie_word_embeddings is false")
        W_U = W_E.T
    stack = lambda k: torch.stack([ly[k] for ly in layers]).contiguous()  # noqa: E731
    return Weights(
        cfg=cfg, W_E=W_E.contiguous(), W_pos=W_pos,
        **{k: stack(k) for k in layers[0] if k != "W_gate"},
        W_gate=stack("W_gate") if "W_gate" in layers[0] else None,
        lnf_w=lnf_w, lnf_b=lnf_b, W_U=W_U.contiguous(), b_U=zeros(cfg.d_vocab),
    )


# -------------------------------------------------------------------- export
def to_hf_state_dict(w: Weights) -> tuple[dict[str, Tensor], dict]:
    """Weights -> (HF state dict, config.json dict) for the model's own architecture.

    Raises ValueError where the weights hold something the architecture cannot express (e.g. a folded
    final-norm bias in b_U: HF GPT-Neo/GPT-2/Llama have no unembedding bias).
    """
    cfg = w.cfg
    L, H, d, e = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head

    def must_be_zero(name, t):
        if t is not None and t.abs().max() > 0:
            raise ValueError(f"{cfg.arch} has no place for {name} (it is nonzero after processing "
                             f"{w.processing}); export the unprocessed weights or use to_transformer_lens")

    must_be_zero("b_U", w.b_U)
    tied = cfg.tie_embeddings and torch.equal(w.W_U, w.W_E.T)
    sd: dict[str, Tensor] = {}
    c = lambda t: t.detach().clone().contiguous()  # noqa: E731
    if cfg.arch in ("gpt_neo", "gpt2"):
        sd["transformer.wte.weight"] = c(w.W_E)
        sd["transformer.wpe.weight"] = c(w.W_pos)
        for l in range(L):
            q = f"transformer.h.{l}."
            sd[q + "ln_1.weight"], sd[q + "ln_1.bias"] = c(w.ln1_w[l]), c(w.ln1_b[l])
            sd[q + "ln_2.weight"], sd[q + "ln_2.bias"] = c(w.ln2_w[l]), c(w.ln2_b[l])
            if cfg.arch == "gpt_neo":
                for n in ("b_Q", "b_K", "b_V"):
                    must_be_zero(n, getattr(w, n)[l])
                a = q + "attn.attention."
                sd[a + "q_proj.weight"] = c(_merge_heads_in(w.W_Q[l]))
                sd[a + "k_proj.weight"] = c(_merge_heads_in(w.W_K[l]))
                sd[a + "v_proj.weight"] = c(_merge_heads_in(w.W_V[l]))
                sd[a + "out_proj.weight"] = c(w.W_O[l].reshape(H * e, d).T)
                sd[a + "out_proj.bias"] = c(w.b_O[l])
                sd[q + "mlp.c_fc.weight"], sd[q + "mlp.c_fc.bias"] = c(w.W_in[l].T), c(w.b_in[l])
                sd[q + "mlp.c_proj.weight"], sd[q + "mlp.c_proj.bias"] = c(w.W_out[l].T), c(w.b_out[l])
            else:
                heads = lambda W: W.transpose(0, 1).reshape(d, H * e)  # noqa: E731
                sd[q + "attn.c_attn.weight"] = c(torch.cat([heads(w.W_Q[l]), heads(w.W_K[l]), heads(w.W_V[l])], 1))
                sd[q + "attn.c_attn.bias"] = c(torch.cat([w.b_Q[l].flatten(), w.b_K[l].flatten(), w.b_V[l].flatten()]))
                sd[q + "attn.c_proj.weight"], sd[q + "attn.c_proj.bias"] = c(w.W_O[l].reshape(H * e, d)), c(w.b_O[l])
                sd[q + "mlp.c_fc.weight"], sd[q + "mlp.c_fc.bias"] = c(w.W_in[l]), c(w.b_in[l])
                sd[q + "mlp.c_proj.weight"], sd[q + "mlp.c_proj.bias"] = c(w.W_out[l]), c(w.b_out[l])
        sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = c(w.lnf_w), c(w.lnf_b)
    else:
        G = H // cfg.n_kv_heads
        sd["model.embed_tokens.weight"] = c(w.W_E)
        for l in range(L):
            q = f"model.layers.{l}."
            for n in ("b_Q", "b_K", "b_V", "b_O", "ln1_b", "ln2_b", "b_in", "b_out"):
                must_be_zero(n, getattr(w, n)[l])
            for n in ("W_K", "W_V"):  # expanded kv heads must still be shared within each group
                t = getattr(w, n)[l]
                if not torch.equal(t, t[::G].repeat_interleave(G, 0)):
                    raise ValueError(f"{n}[{l}] no longer shares heads within kv groups; cannot export as GQA")
            a = q + "self_attn."
            sd[a + "q_proj.weight"] = c(_merge_heads_in(w.W_Q[l]))
            sd[a + "k_proj.weight"] = c(_merge_heads_in(w.W_K[l][::G]))
            sd[a + "v_proj.weight"] = c(_merge_heads_in(w.W_V[l][::G]))
            sd[a + "o_proj.weight"] = c(w.W_O[l].reshape(H * e, d).T)
            sd[q + "input_layernorm.weight"] = c(w.ln1_w[l])
            sd[q + "post_attention_layernorm.weight"] = c(w.ln2_w[l])
            sd[q + "mlp.up_proj.weight"] = c(w.W_in[l].T)
            sd[q + "mlp.gate_proj.weight"] = c(w.W_gate[l].T)
            sd[q + "mlp.down_proj.weight"] = c(w.W_out[l].T)
        must_be_zero("lnf_b", w.lnf_b)
        sd["model.norm.weight"] = c(w.lnf_w)
    if not tied:
        sd["lm_head.weight"] = c(w.W_U.T)
    hf = dict(cfg.hf_config)
    hf["tie_word_embeddings"] = tied
    if cfg.arch == "gpt_neo":  # write a config transformers accepts (it rejects extra attention_types layers)
        hf["attention_types"] = [[[t], 1] for t in cfg.attn_types]
        hf["attention_layers"] = list(cfg.attn_types)
        hf["num_layers"] = L
    hf.setdefault("model_type", cfg.arch)
    return sd, hf


def to_transformer_lens(w: Weights) -> dict[str, Tensor]:
    """A state dict in TransformerLens' HookedTransformer naming (load with strict=False: no mask buffers)."""
    cfg = w.cfg
    sd = {"embed.W_E": w.W_E, "unembed.W_U": w.W_U, "unembed.b_U": w.b_U}
    if w.W_pos is not None:
        sd["pos_embed.W_pos"] = w.W_pos
    G = cfg.n_heads // cfg.n_kv_heads
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        kv = "_" if G > 1 else ""
        sd.update({
            b + "ln1.w": w.ln1_w[l], b + "ln2.w": w.ln2_w[l],
            b + "attn.W_Q": w.W_Q[l], b + "attn.b_Q": w.b_Q[l],
            b + f"attn.{kv}W_K": w.W_K[l][::G], b + f"attn.{kv}b_K": w.b_K[l][::G],
            b + f"attn.{kv}W_V": w.W_V[l][::G], b + f"attn.{kv}b_V": w.b_V[l][::G],
            b + "attn.W_O": w.W_O[l], b + "attn.b_O": w.b_O[l],
            b + "mlp.W_in": w.W_in[l], b + "mlp.b_in": w.b_in[l],
            b + "mlp.W_out": w.W_out[l], b + "mlp.b_out": w.b_out[l],
        })
        if cfg.norm == "LN":
            sd[b + "ln1.b"], sd[b + "ln2.b"] = w.ln1_b[l], w.ln2_b[l]
        if w.W_gate is not None:
            sd[b + "mlp.W_gate"] = w.W_gate[l]
    sd["ln_final.w"] = w.lnf_w
    if cfg.norm == "LN":
        sd["ln_final.b"] = w.lnf_b
    return {k: v.detach().clone() for k, v in sd.items()}



def to_hooked_transformer(w: Weights):
    """TransformerLens 3.x ``HookedTransformer`` holding these weights, for anchors and parity checks.
    LayerNorm models with learned positions (GPT-Neo, GPT-2). Needs ``transformer_lens`` (the test extra)."""
    import transformer_lens as tl

    c = w.cfg
    if c.norm != "LN" or c.positional == "rotary":
        raise ValueError("to_hooked_transformer covers LayerNorm models with learned positions (GPT-Neo, GPT-2)")
    tcfg = tl.HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, d_head=c.d_head, n_heads=c.n_heads, d_mlp=c.d_mlp,
        d_vocab=c.d_vocab, act_fn=c.act_fn, normalization_type="LN", use_attn_scale=c.attn_scale != 1.0,
        attn_types=c.attn_types, window_size=c.window, eps=c.eps, default_prepend_bos=False)
    ht = tl.HookedTransformer(tcfg)
    ht.load_state_dict(to_transformer_lens(w), strict=False)
    return ht.eval()