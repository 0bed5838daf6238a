"""The embedded default: a handcrafted 1-layer GPT-Neo whose mechanisms are known by construction.

Geometry (d_model 256, every direction orthonormal and orthogonal to the all-ones vector, so LayerNorm
only rescales):
    c        one "constant" direction present in every token embedding
    e_t      one "input" direction per vocabulary token t     W_E[t] = sqrt(d) * (0.6 c + 0.8 e_t)
    u_v      one "output" direction per vocabulary token v    W_U[:, v] reads u_v (and e_t for the bigrams)
so LN(W_E[t]) = W_E[t] exactly, a component writing sqrt(d) * g * u_v raises logit v by about g, and a
neuron reading e_t sees only token t.

Planted mechanisms (indices drawn at random with the seed, recorded in ``truth``):
    pronoun_verb  MLP neuron: fires on pronouns (he, she, They...), promotes verbs          (syntax, PRON -> VERB)
    article_noun  MLP neuron: fires on articles (a, the), promotes adjectives and nouns    (syntax, DET -> ADJ/NOUN)
    search        MLP neuron: fires on looking/searching words, promotes the same words    (content)
    copy_head     attention head: attends from every position to earlier names, copies them (name copying)
    direct path   a bigram table: logit(v | t) = log P(v) + 0.6 * PMI(t, v), estimated on the demo corpus
Every other neuron and head is random noise of small magnitude.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from ..model import Model, Tokenizer, parse_hf_config, save_hf
from ..model.weights import Weights
from .corpus import WORDS, generate_stories, vocabulary

D_MODEL, N_HEADS = 256, 4
# Gains in logits. Writers put little norm into the residual (OUT_GAIN amplifies it in W_U), so LayerNorm's
# rescaling barely changes what neurons read.
OUT_GAIN, BIGRAM, COPY_LOGIT, NEURON_LOGIT = 8.0, 1.0, 2.0, 2.0


def demo_tokenizer() -> Tokenizer:
    """Word-level tokenizer over the demo vocabulary with GPT-2's byte-level spelling (" dog" -> "Ġdog")."""
    vocab = {t: i for i, t in enumerate(vocabulary())}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return Tokenizer(tok, bos_id=0, eos_id=0)


@dataclasses.dataclass
class Demo:
    """The demo model, its ground truth and its corpus (``stories``: list of story strings)."""

    model: Model
    truth: dict
    stories: list[str]

    def write(self, out_dir: str | Path) -> Path:
        """HF checkpoint + tokenizer.json + stories.txt (TinyStories format) + truth.json."""
        out = save_hf(self.model, out_dir)
        self.model.tokenizer._tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}))
        (out / "stories.txt").write_text("\n<|endoftext|>\n".join(self.stories) + "\n")
        (out / "truth.json").write_text(json.dumps(self.truth, indent=1))
        return out


def class_ids(tokenizer: Tokenizer) -> dict[str, list[int]]:
    """Demo class name -> token ids (the ground-truth classes of the demo vocabulary)."""
    out = {}
    for cls, words in WORDS.items():
        out[cls] = sorted(tokenizer.to_id(w if cls == "PUNCT" else "Ġ" + w) for w in words)
    out["OTHER"].append(tokenizer.to_id("Once"))
    return out


def build_demo(seed: int = 0, d_mlp: int = 64, n_stories: int = 400) -> Demo:
    g = torch.Generator().manual_seed(seed)
    tok = demo_tokenizer()
    V, d = tok.vocab_size, D_MODEL
    stories = generate_stories(n_stories, seed)
    classes = class_ids(tok)

    # orthonormal directions, all orthogonal to the ones vector (so LayerNorm's mean subtraction is a no-op)
    A = torch.randn(d, 2 * V + 2, generator=g, dtype=torch.float64)
    A[:, 0] = 1.0
    Q = torch.linalg.qr(A).Q[:, 1:].float()
    c, E, U = Q[:, 0], Q[:, 1:V + 1].T, Q[:, V + 1:2 * V + 1].T  # E[t], U[v]: [V, d]
    sd_ = math.sqrt(d)
    alpha, beta = 0.6, 0.8

    W_E = sd_ * (alpha * c[None] + beta * E)

    # direct path: unigram through c, smoothed PMI bigram through e_t
    bi = torch.ones(V, V)  # add-one smoothing
    uni = torch.ones(V)
    for s in stories:
        ids = [tok.bos_id] + tok.encode(s)
        for a, b in zip(ids, ids[1:]):
            bi[a, b] += 1
        for b in ids[1:]:
            uni[b] += 1
    logp_uni = (uni / uni.sum()).log()
    pmi = (bi / bi.sum(1, keepdim=True)).log() - logp_uni[None]

    # attention: head `copy` attends to names (BOS as sink) and copies them into the output space
    perm = torch.randperm(d_mlp, generator=g).tolist()
    copy_head = int(torch.randint(N_HEADS, (1,), generator=g))
    dh = d // N_HEADS
    W_Q = torch.randn(N_HEADS, d, dh, generator=g) * 0.02
    W_K = torch.randn(N_HEADS, d, dh, generator=g) * 0.02
    W_V = torch.randn(N_HEADS, d, dh, generator=g) * 0.02
    W_O = torch.randn(N_HEADS, dh, d, generator=g) * 0.02
    names = classes["NAME"]
    r = torch.zeros(dh)
    r[0] = 1.0
    W_Q[copy_head] = torch.outer(c, r) * (3.0 / (sd_ * alpha))
    W_K[copy_head] = (torch.outer(E[names].sum(0), r) * 2.0 + torch.outer(E[tok.bos_id], r) * 1.0) / (sd_ * beta)
    W_V[copy_head] = 0
    W_O[copy_head] = 0
    for j, n in enumerate(names):  # value slot j+1 carries name n, written to u_n with gain 3
        W_V[copy_head, :, j + 1] = E[n] / (sd_ * beta)
        W_O[copy_head, j + 1] = U[n] * sd_ * (COPY_LOGIT / OUT_GAIN)

    # MLP: three planted neurons among noise
    W_in = torch.randn(d, d_mlp, generator=g) / sd_
    b_in = torch.full((d_mlp,), -1.5)
    W_out = torch.randn(d_mlp, d, generator=g) * 0.02
    rules = {
        "pronoun_verb": (classes["PRON"], classes["VERB"] + classes["SEARCH"], NEURON_LOGIT),
        "article_noun": (classes["DET"], classes["ADJ"] + classes["NOUN"], NEURON_LOGIT),
        "search": (classes["SEARCH"], classes["SEARCH"] + [tok.to_id("Ġfor")], NEURON_LOGIT),
    }
    # the bigram rows of tokens a planted neuron reads are left to that neuron (division of labour)
    for reads, _, _ in rules.values():
        pmi[reads] = 0.0
    W_U = (c[:, None] * logp_uni[None] / (sd_ * alpha) + E.T @ (BIGRAM * pmi) / (sd_ * beta) + U.T * (OUT_GAIN / sd_))
    truth = {"seed": seed, "copy_head": copy_head, "classes": classes, "rules": {}}
    for j, (name, (reads, writes, gain)) in enumerate(rules.items()):
        n = perm[j]
        W_in[:, n] = E[reads].sum(0) * (4.0 / (sd_ * beta))  # pre-activation 4 - 2 = 2 on `reads`, -2 elsewhere
        b_in[n] = -2.0
        W_out[n] = U[writes].sum(0) * sd_ * (gain / OUT_GAIN)
        truth[name] = n
        truth["rules"][name] = {"reads": reads, "writes": writes}
    truth["noise_neurons"] = sorted(perm[len(rules):])

    hf_cfg = {
        "model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"], "vocab_size": V, "hidden_size": d,
        "num_layers": 1, "num_heads": N_HEADS, "attention_types": [[["global"], 1]], "attention_layers": ["global"],
        "window_size": 256, "max_position_embeddings": 512, "intermediate_size": d_mlp,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 0, "embed_dropout": 0.0, "attention_dropout": 0.0, "resid_dropout": 0.0,
    }
    cfg = parse_hf_config(hf_cfg)
    one, zero = torch.ones(1, d), torch.zeros(1, d)
    w = Weights(
        cfg=cfg, W_E=W_E, W_pos=torch.zeros(cfg.n_ctx, d),
        W_Q=W_Q[None], W_K=W_K[None], W_V=W_V[None], b_Q=torch.zeros(1, N_HEADS, dh), b_K=torch.zeros(1, N_HEADS, dh),
        b_V=torch.zeros(1, N_HEADS, dh), W_O=W_O[None], b_O=zero.clone(),
        ln1_w=one.clone(), ln1_b=zero.clone(), ln2_w=one.clone(), ln2_b=zero.clone(),
        W_in=W_in[None], b_in=b_in[None], W_gate=None, W_out=W_out[None], b_out=zero.clone(),
        lnf_w=torch.ones(d), lnf_b=torch.zeros(d), W_U=W_U.contiguous(), b_U=torch.zeros(V),
    )
    return Demo(Model(w, tok, source=f"circuitbook-demo(seed={seed})"), truth, stories)
