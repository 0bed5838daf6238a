"""Small random models (every architecture) for the circuits tests, with non-trivial norms and biases."""

from __future__ import annotations

import pytest
import torch


def _perturb(hf):
    """Give every norm weight/bias and every bias random values, so folding and centring matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return hf.eval()


def make_hf(arch: str, n_layers: int = 2, vocab: int = 61, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_layer=n_layers, n_embd=32, n_head=4, vocab_size=vocab, n_positions=24,
                            activation_function="gelu_new", tie_word_embeddings=False, bos_token_id=0,
                            eos_token_id=0)
        hf = tf.GPT2LMHeadModel(cfg)
    elif arch == "gpt_neo":
        kinds = ["global", "local"][:n_layers] if n_layers <= 2 else ["global"] * n_layers
        cfg = tf.GPTNeoConfig(num_layers=n_layers, hidden_size=32, num_heads=4, vocab_size=vocab,
                              max_position_embeddings=24, attention_types=[[kinds, 1]], window_size=8,
                              intermediate_size=64, bos_token_id=0, eos_token_id=0)
        hf = tf.GPTNeoForCausalLM(cfg)
    else:
        cfg = tf.LlamaConfig(num_hidden_layers=n_layers, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=48, vocab_size=vocab, max_position_embeddings=24,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        hf = tf.LlamaForCausalLM(cfg)
    # spread the random weights a bit more than the init so tops are well separated
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    return _perturb(hf)


def make_model(arch: str, n_layers: int = 2, vocab: int = 61, seed: int = 0):
    from circuitbook.model import from_hf_model

    return from_hf_model(make_hf(arch, n_layers, vocab, seed))


@pytest.fixture(scope="session")
def gpt2_2l_hf():
    return make_hf("gpt2", 2)


@pytest.fixture(scope="session")
def gpt2_2l(gpt2_2l_hf):
    from circuitbook.model import from_hf_model

    return from_hf_model(gpt2_2l_hf)


@pytest.fixture(scope="session")
def neo_1l():
    return make_model("gpt_neo", 1, vocab=53)


@pytest.fixture(scope="session")
def llama_2l_hf():
    return make_hf("llama", 2, vocab=47)


@pytest.fixture(scope="session")
def llama_2l(llama_2l_hf):
    from circuitbook.model import from_hf_model

    return from_hf_model(llama_2l_hf)


@pytest.fixture(scope="session")
def tl_bridge(gpt2_tokenizer_dir, tmp_path_factory):
    """TransformerLens (test-only) on a copy of an in-memory HF model, in HookedTransformer-compatible mode
    (fold_ln, centre writing weights and unembed): factory(hf_model, name) -> TransformerBridge, cached.
    (The bridge processes the weights of the model it wraps in place, hence the copy.)"""
    import copy
    import shutil

    tl = pytest.importorskip("transformer_lens.model_bridge")
    from transformers import GPT2TokenizerFast

    d = tmp_path_factory.mktemp("tok")
    shutil.copy(gpt2_tokenizer_dir / "encoder.json", d / "vocab.json")
    shutil.copy(gpt2_tokenizer_dir / "vocab.bpe", d / "merges.txt")
    tok = GPT2TokenizerFast.from_pretrained(str(d))

    cache = {}

    def boot(hf, name):
        if id(hf) not in cache:
            b = tl.TransformerBridge.boot_transformers(name, hf_model=copy.deepcopy(hf), tokenizer=tok)
            b.enable_compatibility_mode(disable_warnings=True)
            cache[id(hf)] = (hf, b)
        return cache[id(hf)][1]
    return boot


@pytest.fixture(scope="session", params=["gpt2", "gpt_neo", "llama"])
def any_model(request, gpt2_2l, neo_1l, llama_2l):
    return {"gpt2": gpt2_2l, "gpt_neo": neo_1l, "llama": llama_2l}[request.param]


@pytest.fixture(scope="session")
def demo():
    from circuitbook.demo import build_demo

    return build_demo(seed=0)


def build_planted(V: int = 24, d: int = 64, seed: int = 0):
    """A handcrafted 1-layer GPT-Neo with known circuits (no training, no noise):

    * direct path = a random bigram logit table ``truth["bigram"]`` [V, V] (exact: LN is the identity on W_E);
    * head 0 copies: its OV circuit maps every token to itself;
    * head 1 is a skip-trigram head: query ``a`` attends to key ``b`` and its OV maps ``b`` to ``c``.
    Directions: c0 (constant), e_t (input, one per token), u_t (output), orthonormal and orthogonal to the
    all-ones vector, so LayerNorm only divides by the (unit) RMS.
    """
    from circuitbook.model import Model, parse_hf_config
    from circuitbook.model.weights import Weights

    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, 2 * V + 2, generator=g, dtype=torch.float64)
    A[:, 0] = 1.0
    Q = torch.linalg.qr(A).Q[:, 1:].float()
    c0, E, U = Q[:, 0], Q[:, 1:V + 1].T, Q[:, V + 1:2 * V + 1].T
    rd = d ** 0.5
    W_E = rd * (0.6 * c0[None] + 0.8 * E)
    bigram = 3.0 * torch.randn(V, V, generator=g)
    W_U = E.T @ bigram / (rd * 0.8) + U.T * (4.0 / rd)
    H, dh = 2, d // 2
    W_Q, W_K, W_V, W_O = (torch.zeros(H, d, dh) for _ in range(4))
    W_O = torch.zeros(H, dh, d)
    for t in range(V):  # head 0: copy
        W_V[0, :, t] = E[t] / (rd * 0.8)
        W_O[0, t] = U[t] * rd
    a, b, c = 3, 7, 11
    W_Q[1, :, 0] = E[a] * 4.0 / (rd * 0.8)
    W_K[1, :, 0] = E[b] * 4.0 / (rd * 0.8)
    W_V[1, :, 0] = E[b] / (rd * 0.8)
    W_O[1, 0] = U[c] * rd
    cfg = parse_hf_config({
        "model_type": "gpt_neo", "vocab_size": V, "hidden_size": d, "num_layers": 1, "num_heads": H,
        "attention_types": [[["global"], 1]], "max_position_embeddings": 32, "intermediate_size": 8,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-9, "tie_word_embeddings": False})
    z = lambda *s: torch.zeros(*s)  # noqa: E731
    w = Weights(cfg=cfg, W_E=W_E, W_pos=z(32, d), W_Q=W_Q[None], W_K=W_K[None], W_V=W_V[None], b_Q=z(1, H, dh),
                b_K=z(1, H, dh), b_V=z(1, H, dh), W_O=W_O[None], b_O=z(1, d), ln1_w=torch.ones(1, d), ln1_b=z(1, d),
                ln2_w=torch.ones(1, d), ln2_b=z(1, d), W_in=z(1, d, 8), b_in=z(1, 8), W_gate=None, W_out=z(1, 8, d),
                b_out=z(1, d), lnf_w=torch.ones(d), lnf_b=z(d), W_U=W_U.contiguous(), b_U=z(V))
    truth = {"bigram": bigram, "copy_head": 0, "trigram_head": 1, "trigram": (b, a, c)}
    return Model(w, None, "planted"), truth


@pytest.fixture(scope="session")
def planted():
    return build_planted()
