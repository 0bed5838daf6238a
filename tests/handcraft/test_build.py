import math
from collections import Counter

import torch

from circuitbook.corpus import Batch
from circuitbook.handcraft import build, mean_loss, parse_spec
from circuitbook.model import Model, parse_hf_config, run
from circuitbook.model.weights import Weights


def _orthogonal_model(V=12, d=40, seed=0):
    """A GPT-Neo whose attention and MLP write nothing, no positions, and an unembedding of orthonormal
    columns (orthogonal to the ones vector) scaled by 4: the direct path can express any distribution."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, V + 1, generator=g, dtype=torch.float64)
    A[:, 0] = 1.0
    Q = torch.linalg.qr(A).Q[:, 1:].float()  # [d, V]
    cfg = parse_hf_config({"model_type": "gpt_neo", "vocab_size": V, "hidden_size": d, "num_layers": 1,
                           "num_heads": 2, "attention_types": [[["global"], 1]], "max_position_embeddings": 64,
                           "intermediate_size": 8, "tie_word_embeddings": False})
    z = torch.zeros
    w = Weights(cfg=cfg, W_E=torch.randn(V, d, generator=g), W_pos=z(64, d), W_Q=torch.randn(1, 2, d, d // 2, generator=g),
                W_K=torch.randn(1, 2, d, d // 2, generator=g), W_V=torch.randn(1, 2, d, d // 2, generator=g),
                b_Q=z(1, 2, d // 2), b_K=z(1, 2, d // 2), b_V=z(1, 2, d // 2), W_O=z(1, 2, d // 2, d), b_O=z(1, d),
                ln1_w=torch.ones(1, d), ln1_b=z(1, d), ln2_w=torch.ones(1, d), ln2_b=z(1, d),
                W_in=torch.randn(1, d, 8, generator=g), b_in=z(1, 8), W_gate=None, W_out=z(1, 8, d), b_out=z(1, d),
                lnf_w=torch.ones(d), lnf_b=z(d), W_U=Q * 4.0, b_U=z(V))
    return Model(w, None, "orthogonal")


def test_bigram_direct_path_reaches_the_analytic_loss():
    V = 12
    model = _orthogonal_model(V)
    g = torch.Generator().manual_seed(1)
    # a corpus with structure: token t is mostly followed by (t * 5 + 1) % V
    seqs = []
    for _ in range(40):
        s = [0]
        for _ in range(20):
            s.append((s[-1] * 5 + 1) % V if torch.rand(1, generator=g) < 0.7 else int(torch.randint(V, (1,), generator=g)))
        seqs.append(s)
    toks = torch.tensor(seqs)
    batches = lambda: [Batch(toks, torch.ones_like(toks, dtype=torch.bool), torch.arange(len(seqs)),  # noqa: E731
                             torch.zeros(len(seqs), dtype=torch.long))]
    sm = 0.5
    spec = parse_spec({"direct": {"bigram": {"smoothing": sm}}})
    built = build(spec, model, batches)
    assert ("embed", 0, 0) in built.removed
    # the analytic expectation, counted independently
    pairs = Counter((a, b) for s in seqs for a, b in zip(s, s[1:]))
    src = Counter(a for s in seqs for a in s[:-1])
    n = sum(pairs.values())
    expected = -sum(c * math.log((c + sm) / (src[a] + sm * V)) for (a, b), c in pairs.items()) / n
    got, n_tok = mean_loss(built.weights, batches())
    assert n_tok == n
    assert abs(got - expected) < 1e-4, (got, expected)
    assert mean_loss(model.weights, batches())[0] > expected + 0.5  # the random embedding was far off


def test_demo_spec_behaves_as_written(demo, demo_fit):
    m, truth, cls = demo.model, demo.truth, demo.truth["classes"]
    spec = parse_spec({
        "classes": {"verbs": {"ids": cls["VERB"]}},
        "neurons": [{"name": "pron->verb", "input": {"class": "PRON"}, "output": {"promote": {"class": "verbs"}},
                     "strength": 4, "bias": -2, "gain": 2}]})
    built = build(spec, m, demo_fit, cls)
    (key, name), = built.added.items()
    i = key[2]
    assert i == m.cfg.d_mlp and built.weights.cfg.d_mlp == m.cfg.d_mlp + 1
    toks = m.to_tokens("Once upon a time the dog saw the cat . They")
    o = run(built.weights, toks, ["blocks.0.mlp.hook_post", "logits"])
    act = o["blocks.0.mlp.hook_post"][0, :, i]
    assert act[-1] > 1.0  # fires on "They"
    assert act[:-1].max() < 0.2  # and nowhere else in this prompt
    # raises verb logits relative to the rest, by about the gain times the activation
    base = run(m.weights, toks)["logits"][0, -1]
    delta = o["logits"][0, -1] - base
    verbs = torch.tensor(cls["VERB"])
    rest = torch.ones(m.cfg.d_vocab, dtype=torch.bool)
    rest[verbs] = False
    lift = float(delta[verbs].mean() - delta[rest].mean())
    # (less than gain x activation: the planted pronoun neuron also fires here, so the final norm's scale
    # is larger than its corpus average, which the gain is calibrated on)
    assert 1.0 < lift < float(act[-1]) * 2 * 1.5
    # on a prompt with no pronoun, the model is unchanged
    t2 = m.to_tokens("the big dog saw a cat")
    lp = lambda w: run(w, t2)["logits"].log_softmax(-1)  # noqa: E731
    assert (lp(built.weights) - lp(m.weights)).abs().max() < 0.2  # gelu(-2) is small but not 0


def test_class_attention_head_attends_and_maps(demo, demo_fit):
    m, cls = demo.model, demo.truth["classes"]
    spec = parse_spec({"heads": [{"head": 0, "attend": {"class": "NAME"}, "strength": 10,
                                  "ov": {"map": [{"from": {"class": "NAME"}, "to": {"promote": {"class": "NAME"}}}]}}]})
    built = build(spec, m, demo_fit, cls)
    toks = m.to_tokens("Once upon a time Tom saw a big dog and the cat")
    pat = run(built.weights, toks, ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"][0, 0]
    tom = 5
    assert m.tokenizer.token_str(int(toks[0, tom])) == " Tom"
    assert (pat[tom:, tom] > 0.8).all()  # every later position attends to the name
    names = torch.tensor(cls["NAME"])
    lg = run(built.weights, toks)["logits"][0, -1]
    lg0 = run(m.weights, toks)["logits"][0, -1]
    assert float((lg - lg0)[names].mean() - (lg - lg0).mean()) > 0.5


def test_previous_token_head_on_ts1l(ts1l, stories_path):
    from itertools import islice

    from circuitbook.corpus import batches, read_stories

    stories = list(islice(read_stories(stories_path), 12))
    fit = lambda: batches(stories[:10], ts1l.tokenizer, 128, 5)  # noqa: E731
    spec = parse_spec({"heads": [{"head": 5, "attend": "previous", "ov": "copy", "strength": 30}]})
    built = build(spec, ts1l, fit, max_calibration_tokens=1200)
    toks = ts1l.to_tokens(stories[11])[:, :100]
    pat = run(built.weights, toks, ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"][0, 5]
    top = pat[1:].argmax(-1)
    hit = (top == torch.arange(0, len(top))).float().mean()
    assert hit > 0.6, hit  # 0.78 measured; chance is about 1/50


def test_class_rules_resolve_through_the_books_typing(tmp_path):
    """A spec's POS-class rule reads the typing stage's token classes from the book."""
    from circuitbook.book import Book
    from circuitbook.demo import build_demo
    from circuitbook.handcraft import token_classes_from_book
    from circuitbook.roles.run import type_model

    demo = build_demo()
    book = Book.open(tmp_path / "b.db")
    assert token_classes_from_book(book) == {}
    type_model(demo.model, demo.stories[:150], book=book, progress=False)
    classes = token_classes_from_book(book)
    strs = book.token_strs()
    assert {" He", " She", " They"} <= {strs[i] for i in classes["PRON"]}
    assert {" dog", " ball"} <= {strs[i] for i in classes["NOUN"]}
