"""Skip-trigrams: the planted one is found first; every triple is consistent with the dense QK and OV circuits."""

import torch

from circuitbook.circuits import make_basis, ov_matrix, ov_tops, qk_matrix, qk_tops, skip_trigrams


def test_planted_skip_trigram_comes_first(planted):
    model, truth = planted
    h = truth["trigram_head"]
    tri = skip_trigrams(qk_tops(model, 0, h, k=3, n_pairs=10), ov_tops(model, 0, h, k=3, n_pairs=10), n=5)
    key, query, out = truth["trigram"]
    assert tri.as_list()[0][:3] == (key, query, out)
    assert abs(float(tri.score[0]) - 1.0) < 1e-6  # strongest attention x strongest write


def test_triples_agree_with_dense_circuits(gpt2_2l):
    b = make_basis(gpt2_2l)
    l, h = 1, 0
    qk, ov = qk_tops(b, l, h, k=4, n_pairs=20), ov_tops(b, l, h, k=4, n_pairs=20)
    tri = skip_trigrams(qk, ov, n=30)
    Q, O = qk_matrix(b, l, h), ov_matrix(b, l, h)
    assert len(tri) > 0 and (tri.score[:-1] >= tri.score[1:]).all()
    for k_, q_, o_, s in tri.as_list():
        qv, ovv = float(Q[q_, k_]), float(O[k_, o_])
        assert qv > 0 and ovv > 0
        assert abs(s - qv / float(Q.max()) * ovv / float(O.max())) < 1e-4
        assert o_ in O[k_].topk(4).indices.tolist()
    # brute force: best triple among the top-20 QK pairs x each key's top-4 outputs
    pairs = [(int(i) // Q.shape[1], int(i) % Q.shape[1]) for i in Q.flatten().topk(20).indices]
    best = max((float(Q[q, k]) * float(o) / float(Q.max() * O.max()), k, q, int(j))
               for q, k in pairs if Q[q, k] > 0 for o, j in zip(*O[k].topk(4)) if o > 0)
    assert tri.as_list()[0][:3] == best[1:] and abs(tri.as_list()[0][3] - best[0]) < 1e-5


def test_no_positive_pairs_gives_no_triples(planted):
    model, truth = planted
    qk = qk_tops(model, 0, truth["copy_head"], k=2, n_pairs=5)  # the copy head has no QK weights at all
    qk.top_pairs.vals = torch.zeros_like(qk.top_pairs.vals)
    assert len(skip_trigrams(qk, ov_tops(model, 0, 0, k=2, n_pairs=5))) == 0
