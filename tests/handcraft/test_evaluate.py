import torch

from circuitbook.handcraft import baselines, build, evaluate, evaluate_spec, mean_loss, parse_spec, recovered, unit_means
from circuitbook.model import run


def test_evaluate_matches_an_independent_computation(demo, demo_fit, demo_eval):
    m, truth, cls = demo.model, demo.truth, demo.truth["classes"]
    spec = parse_spec({"neurons": [{"replaces": truth["article_noun"], "input": {"class": "DET"},
                                    "output": {"promote": {"class": "NOUN"}}, "strength": 4, "bias": -2, "gain": 2}]})
    means = unit_means(m.weights, demo_fit())
    built = build(spec, m, demo_fit, cls, means)
    assert built.removed == [("neuron", 0, truth["article_noun"])]
    bl = baselines(m.weights, built.removed, means)
    ev = evaluate(m.weights, built.weights, demo_eval(), bl, m.tokenizer, cls, top_k=5)
    # brute force, one sequence at a time
    ce_o = ce_h = kl = agree = 0.0
    n = 0
    deltas = []
    for b in demo_eval():
        for r in range(len(b.tokens)):
            t = b.tokens[r, : int(b.mask[r].sum())]
            lo = run(m.weights, t)["logits"][0, :-1].double().log_softmax(-1)
            lh = run(built.weights, t)["logits"][0, :-1].double().log_softmax(-1)
            for p in range(len(t) - 1):
                ce_o -= float(lo[p, t[p + 1]])
                ce_h -= float(lh[p, t[p + 1]])
                kl += float((lo[p].exp() * (lo[p] - lh[p])).sum())
                agree += float(lo[p].argmax() == lh[p].argmax())
                deltas.append(float(lo[p, t[p + 1]] - lh[p, t[p + 1]]))
                n += 1
    assert ev.n_tokens == n
    assert abs(ev.ce_original - ce_o / n) < 1e-5 and abs(ev.ce_handcrafted - ce_h / n) < 1e-5
    assert abs(ev.kl - kl / n) < 1e-5 and abs(ev.top1_agreement - agree / n) < 1e-9
    for mode in ("zero", "mean"):
        ce_b = mean_loss(bl[mode], demo_eval())[0]
        assert abs(ev.ce_baselines[mode] - ce_b) < 1e-5
        assert abs(ev.recovered[mode] - (ce_b - ce_h / n) / (ce_b - ce_o / n)) < 1e-4
    assert abs(ev.worst[0].delta - max(deltas)) < 1e-4
    assert abs(sum(g.total_delta for g in ev.by_target) - sum(deltas)) < 1e-3  # every class is disjoint here
    # the spec promotes nouns only, the planted neuron also adjectives: the breakdown says so
    assert ev.by_target[0].group == "ADJ"
    assert "loss recovered" in ev.summary()


def test_recovered_formula():
    assert recovered(3.0, 2.5, 2.0) == 0.5
    assert recovered(3.0, 2.0, 2.0) == 1.0
    assert recovered(2.0, 2.5, 2.0) is None


def test_planted_spec_recovers_the_planted_neurons(demo):
    """The demo's own rules, written as a spec, recover most of what ablating those neurons loses."""
    m, truth, cls = demo.model, demo.truth, demo.truth["classes"]
    rules = truth["rules"]
    spec = parse_spec({"neurons": [
        {"name": k, "replaces": truth[k], "input": {"ids": rules[k]["reads"]},
         "output": {"promote": {"ids": rules[k]["writes"]}}, "strength": 4, "bias": -2, "gain": 2}
        for k in ("pronoun_verb", "article_noun")]})
    r = evaluate_spec(spec, m, demo.stories[:60], demo.stories[60:], cls, batch_size=16)
    assert r.evaluation.recovered["mean"] > 0.8 and r.evaluation.recovered["zero"] > 0.8
