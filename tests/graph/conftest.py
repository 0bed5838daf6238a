"""Small random models (transformers, so ablations can be checked against an independent forward) and an
independent, autograd-based linearised twin of the model for checking attribution values and edges."""

from __future__ import annotations

import pytest
import torch

from circuitbook.model import from_hf_model


def _randomise(hf, seed: int, scale: float = 0.25):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name and name.endswith("weight"):  # norms: around 1, so scales stay sane
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return hf.eval()


@pytest.fixture(scope="session")
def neo_hf():
    """2-layer GPT-Neo (global then local attention, window 3) with random weights and biases."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    cfg = GPTNeoConfig(vocab_size=61, max_position_embeddings=32, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=48, attention_types=[[["global", "local"], 1]], window_size=3,
                       embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
                       bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return _randomise(GPTNeoForCausalLM(cfg), 1)


@pytest.fixture(scope="session")
def gpt2_hf():
    """2-layer GPT-2 with random weights and biases (attention scaled by 1/sqrt(d_head))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=53, n_positions=32, n_embd=24, n_layer=2, n_head=3, n_inner=40,
                     embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0,
                     eos_token_id=0)
    torch.manual_seed(0)
    return _randomise(GPT2LMHeadModel(cfg), 2)


@pytest.fixture(scope="session")
def neo(neo_hf):
    return from_hf_model(neo_hf, source="random-neo")


@pytest.fixture(scope="session")
def gpt2(gpt2_hf):
    return from_hf_model(gpt2_hf, source="random-gpt2")


@pytest.fixture(scope="session")
def ts656k(ts656k_dir):
    from circuitbook.model import load_model

    return load_model(ts656k_dir)


# --------------------------------------------------------------------------- independent linearised twin
class LinearTwin:
    """The model with norm scales, attention patterns and activation gates frozen at one prompt, written
    out directly from the weights. Every node's output carries an additive probe, so autograd gives the
    gradient of the logit with respect to each node's output (and so each node's total effect)."""

    def __init__(self, model, tokens, pos, target, contrast=None):
        from circuitbook.model import run

        w = model.weights
        self.w, self.cfg, self.T, self.pos = w, w.cfg, len(tokens), pos
        self.tokens = torch.as_tensor(tokens)
        L = self.cfg.n_layers
        pre = "mlp.hook_pre_linear" if w.W_gate is not None else "mlp.hook_pre"
        names = [f"blocks.{l}.{n}" for l in range(L) for n in
                 ("ln1.hook_scale", "attn.hook_pattern", "ln2.hook_scale", pre, "mlp.hook_post")]
        c = {k: v[0].clone() for k, v in run(w, self.tokens[None], names + ["ln_final.hook_scale"]).items()}
        self.s1 = [c[f"blocks.{l}.ln1.hook_scale"] for l in range(L)]
        self.s2 = [c[f"blocks.{l}.ln2.hook_scale"] for l in range(L)]
        self.patt = [c[f"blocks.{l}.attn.hook_pattern"] for l in range(L)]
        self.gamma = [c[f"blocks.{l}.mlp.hook_post"] / c[f"blocks.{l}.{pre}"] for l in range(L)]
        self.sf = c["ln_final.hook_scale"]
        self.u = w.W_U[:, target] - (w.W_U[:, contrast] if contrast is not None else 0)
        self.ub = w.b_U[target] - (w.b_U[contrast] if contrast is not None else 0)

    def ln(self, x, wt, b, s):
        if self.cfg.norm == "LN":
            x = x - x.mean(-1, keepdim=True)
        return x / s * wt + b

    # one node's output as an affine function of the residual it reads (for edges)
    def head_out(self, l, h, q, k, resid_k):
        w = self.w
        v = self.ln(resid_k, w.ln1_w[l], w.ln1_b[l], self.s1[l][k]) @ w.W_V[l, h] + w.b_V[l, h]
        return self.patt[l][h, q, k] * v @ w.W_O[l, h]

    def neuron_out(self, l, i, q, resid_q):
        w = self.w
        lin = self.ln(resid_q, w.ln2_w[l], w.ln2_b[l], self.s2[l][q]) @ w.W_in[l][:, i] + w.b_in[l, i]
        return self.gamma[l][q, i] * lin * w.W_out[l, i]

    def run(self):
        """-> (logit, {node id: output vector}, {node id: d logit / d output})."""
        w, T, H, m, d = self.w, self.T, self.cfg.n_heads, self.cfg.d_mlp, self.cfg.d_model
        E = w.W_E[self.tokens] + (w.W_pos[:T] if w.W_pos is not None else 0)
        probes = {"input": torch.zeros(T, d, requires_grad=True)}
        outs = {"input": E}
        resid = E + probes["input"]
        for l in range(self.cfg.n_layers):
            x = self.ln(resid, w.ln1_w[l], w.ln1_b[l], self.s1[l])
            v = torch.einsum("kd,hde->khe", x, w.W_V[l]) + w.b_V[l]
            ho = self.patt[l][..., None] * torch.einsum("khe,hed->hkd", v, w.W_O[l])[:, None]  # [h, q, k, d]
            probes[f"head{l}"] = torch.zeros(H, T, T, d, requires_grad=True)
            outs[f"head{l}"] = ho
            resid = resid + (ho + probes[f"head{l}"]).sum((0, 2)) + w.b_O[l]
            x = self.ln(resid, w.ln2_w[l], w.ln2_b[l], self.s2[l])
            post = self.gamma[l] * (x @ w.W_in[l] + w.b_in[l])
            no = post[..., None] * w.W_out[l]  # [q, m, d]
            probes[f"neuron{l}"] = torch.zeros(T, m, d, requires_grad=True)
            outs[f"neuron{l}"] = no
            resid = resid + (no + probes[f"neuron{l}"]).sum(1) + w.b_out[l]
        logit = self.ln(resid[self.pos], w.lnf_w, w.lnf_b, self.sf[self.pos]) @ self.u + self.ub
        grads = torch.autograd.grad(logit, list(probes.values()))
        return logit.detach(), {k: o.detach() for k, o in outs.items()}, dict(zip(probes, grads))

    def node_out_and_grad(self, node_id, outs, grads):
        p = node_id.split("/")
        if p[0] == "input":
            k = int(p[1])
            return outs["input"][k], grads["input"][k]
        if p[0] == "head":
            l, h, q, k = map(int, p[1:])
            return outs[f"head{l}"][h, q, k], grads[f"head{l}"][h, q, k]
        l, i, q = map(int, p[1:])
        return outs[f"neuron{l}"][q, i], grads[f"neuron{l}"][q, i]

    def bias_in(self, tgt_id, grads):
        """What the constants (biases written before the target at its read position, and the target's own
        biases) contribute to the target's value."""
        w, p = self.w, tgt_id.split("/")
        l = int(p[1])
        B = w.b_O[:l].sum(0) + w.b_out[:l].sum(0) + (w.b_O[l] if p[0] == "neuron" else 0)
        if p[0] == "head":
            h, q, k = map(int, p[2:])
            return float(self.head_out(l, h, q, k, B) @ grads[f"head{l}"][h, q, k])
        i, q = map(int, p[2:])
        return float(self.neuron_out(l, i, q, B) @ grads[f"neuron{l}"][q, i])

    def edge(self, src_out, tgt_id, grads):
        """Direct effect of a vector written where the target reads, on the logit through the target."""
        p = tgt_id.split("/")
        z = torch.zeros_like(src_out)
        if p[0] == "head":
            l, h, q, k = map(int, p[1:])
            f = lambda r: self.head_out(l, h, q, k, r)  # noqa: E731
            g = grads[f"head{l}"][h, q, k]
        else:
            l, i, q = map(int, p[1:])
            f = lambda r: self.neuron_out(l, i, q, r)  # noqa: E731
            g = grads[f"neuron{l}"][q, i]
        return float((f(src_out) - f(z)) @ g)


@pytest.fixture(scope="session")
def linear_twin():
    return LinearTwin
