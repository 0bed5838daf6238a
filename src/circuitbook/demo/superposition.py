"""Ground truth for dictionaries: a 1-layer model whose 8 planted rules live in superposition over 16 neurons.

Geometry as in :mod:`.model` (orthonormal token-input directions e_t and output directions u_v, all
orthogonal to the ones vector, so ln2's output for token t is exactly W_E[t]); attention writes nothing,
so the MLP reads only the current token.

Rule r reads a token class C_r and writes ``GAIN * w_r``, w_r the unit vector along the sum of u_v over its
target class (PRON -> VERB, DET -> NOUN, ...; eight distinct targets). The MLP has 16 neurons; neuron j's
pre-activation on a token of C_r is ``SCALE * A[j, r]`` with A the first 8 columns of a random 16x16
rotation (0 on tokens of no class), so every neuron takes part in every rule. W_out is solved exactly so
that the MLP's output on a token of C_r is GAIN * w_r (and 0 on other tokens): the function is 8 clean
rules, no neuron is one of them, and a dictionary can find them (its decoder rows should align with w_r).
"""

from __future__ import annotations

import math

import torch

from ..model import Model, parse_hf_config
from ..model.weights import Weights
from .corpus import generate_stories
from .model import D_MODEL, N_HEADS, Demo, class_ids, demo_tokenizer

RULES = (("PRON", "VERB"), ("DET", "NOUN"), ("NAME", "AUX"), ("VERB", "DET"), ("SEARCH", "ADP"),
         ("ADJ", "PUNCT"), ("NOUN", "CCONJ"), ("ADP", "NAME"))
D_MLP, SCALE, GAIN = 16, 8.0, 4.0


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    from ..model.maths import activation as _act

    return _act(x, "gelu_new")


def build_superposition(seed: int = 0, n_stories: int = 300) -> Demo:
    """The model, its truth (``rules``: name -> reads / writes token ids and the unit write direction ``w``)
    and a generated corpus."""
    g = torch.Generator().manual_seed(seed)
    tok = demo_tokenizer()
    V, d = tok.vocab_size, D_MODEL
    classes = class_ids(tok)
    A = torch.randn(d, 2 * V + 2, generator=g, dtype=torch.float64)
    A[:, 0] = 1.0
    Q = torch.linalg.qr(A).Q[:, 1:].float()
    c, E, U = Q[:, 0], Q[:, 1:V + 1].T, Q[:, V + 1:2 * V + 1].T
    sd = math.sqrt(d)
    W_E = sd * (0.6 * c[None] + 0.8 * E)

    R = torch.linalg.qr(torch.randn(D_MLP, D_MLP, generator=g, dtype=torch.float64)).Q[:, :len(RULES)].float()
    W_in = torch.zeros(d, D_MLP)
    targets = []
    for r, (src, dst) in enumerate(RULES):
        W_in += torch.outer(E[classes[src]].sum(0), R[:, r]) * (SCALE / (sd * 0.8))
        w = U[classes[dst]].sum(0)
        targets.append(w / w.norm())
    Wt = torch.stack(targets)                                   # [8, d] unit write directions
    P = _gelu_new(SCALE * R.T)                                  # [8 rules, 16 neurons] post-activations
    W_out = torch.linalg.lstsq(P.double(), (GAIN * Wt).double()).solution.float()  # exact: rank 8 < 16
    # plus junk in P's null space along directions no rule writes: the function is unchanged, but no
    # neuron's W_out row points along a rule's write direction
    null = torch.linalg.svd(P.double(), full_matrices=True).Vh[len(RULES):].T.float()     # [16, 8], P @ null = 0
    junk = torch.randn(D_MLP - len(RULES), d, generator=g)
    junk -= (junk @ Wt.T) @ Wt
    W_out += null @ junk * (GAIN / math.sqrt(d))

    W_U = c[:, None] * torch.zeros(V)[None] + U.T * (8.0 / sd)
    hf_cfg = {"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"], "vocab_size": V, "hidden_size": d,
              "num_layers": 1, "num_heads": N_HEADS, "attention_types": [[["global"], 1]],
              "attention_layers": ["global"], "window_size": 256, "max_position_embeddings": 512,
              "intermediate_size": D_MLP, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
    cfg = parse_hf_config(hf_cfg)
    dh = d // N_HEADS
    z = lambda *s: torch.zeros(*s)  # noqa: E731
    one = torch.ones(1, d)
    w = Weights(cfg=cfg, W_E=W_E, W_pos=z(cfg.n_ctx, d), W_Q=z(1, N_HEADS, d, dh), W_K=z(1, N_HEADS, d, dh),
                W_V=z(1, N_HEADS, d, dh), b_Q=z(1, N_HEADS, dh), b_K=z(1, N_HEADS, dh), b_V=z(1, N_HEADS, dh),
                W_O=z(1, N_HEADS, dh, d), b_O=z(1, d), ln1_w=one.clone(), ln1_b=z(1, d), ln2_w=one.clone(),
                ln2_b=z(1, d), W_in=W_in[None], b_in=z(1, D_MLP), W_gate=None, W_out=W_out[None], b_out=z(1, d),
                lnf_w=torch.ones(d), lnf_b=z(d), W_U=W_U.contiguous(), b_U=z(V))
    truth = {"seed": seed, "classes": classes, "mixing": R.tolist(), "rules": {
        f"{src}->{dst}": {"reads": classes[src], "writes": classes[dst], "w": Wt[r].tolist()}
        for r, (src, dst) in enumerate(RULES)}}
    return Demo(Model(w, tok, source=f"circuitbook-superposition(seed={seed})"), truth,
                generate_stories(n_stories, seed))


def recovery(decoder: torch.Tensor, truth: dict) -> dict[str, float]:
    """For each planted rule, the best cosine between its write direction and a decoder row [d_sae, d]."""
    Wd = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return {name: float((Wd @ torch.tensor(r["w"])).max()) for name, r in truth["rules"].items()}


def neuron_recovery(model: Model, truth: dict) -> dict[str, float]:
    """The same cosine with the best single neuron's W_out row (the baseline a dictionary must beat)."""
    return recovery(model.weights.W_out[0], truth)


def SUPERPOSITION_TRAINING(seed: int = 0):
    """The small transcoder's training settings: 300 steps of 256 tokens, resampling under-used features."""
    from ..dictionary import TrainConfig

    return TrainConfig(tokens=256 * 300, batch_size=256, lr=3e-3, warmup_steps=5, buffer_batches=8, seq_batch=16,
                       max_len=128, seed=seed, dead_tokens=2000, resample_every=25)


def run_superposition_check(seed: int = 0, echo=print, progress: bool = False) -> dict:
    """Train a small transcoder on the superposition model and report how well it recovers the rules."""
    from ..dictionary import DictionaryConfig
    from ..dictionary.trainer import train

    demo = build_superposition(seed)
    m = demo.model
    dcfg = DictionaryConfig("transcoder", 0, m.cfg.d_model, 32, "topk", k=1)
    tcfg = SUPERPOSITION_TRAINING(seed)
    res = train(m, demo.stories, dcfg, tcfg, progress=progress)
    got, base = recovery(res.dictionary.W_dec.detach(), demo.truth), neuron_recovery(m, demo.truth)
    echo(f"superposition: 8 rules over {D_MLP} neurons; transcoder ({dcfg.d_sae} features, k={dcfg.k}, "
         f"{res.steps} steps, FVU {res.fvu:.4f})")
    for name in got:
        echo(f"   {'ok ' if got[name] >= 0.9 else 'MISS'} {name:<14} best decoder cosine {got[name]:.3f} "
             f"(best neuron {base[name]:.3f})")
    return {"recovery": got, "neurons": base, "fvu": res.fvu, "steps": res.steps}
