import torch

from circuitbook.scan.mergeable_topk import EMPTY_KEY, TopK, merge_best, topk_rows


def brute(row, k):
    """(value desc, column asc) order by plain Python sorting."""
    idx = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
    return [row[j] for j in idx], idx


def test_topk_rows_ties_and_small_n():
    g = torch.Generator().manual_seed(0)
    for n, k in [(50, 5), (50, 50), (7, 20), (1, 3), (200, 32)]:
        # few distinct values: ties everywhere, including at the k-th place; -0.0 and 0.0 are equal
        x = torch.randint(-3, 4, (9, n), generator=g).float() / 2
        x[x == 0] = torch.tensor([-0.0, 0.0])[torch.randint(0, 2, ((x == 0).sum().item(),), generator=g)]
        v, c = topk_rows(x, k)
        for r in range(9):
            bv, bc = brute(x[r].tolist(), k)
            assert c[r].tolist() == bc
            assert v[r].tolist() == bv


def test_topk_rows_float64_ties():
    x = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]], dtype=torch.float64)
    v, c = topk_rows(x, 2)
    assert c.tolist() == [[1, 2]] and v.tolist() == [[2.0, 2.0]]


def test_merge_best_orders_by_value_then_key():
    va = torch.tensor([[3.0, 1.0, float("-inf")]])
    ka = torch.tensor([[10, 4, EMPTY_KEY]])
    vb = torch.tensor([[1.0, 3.0]])
    kb = torch.tensor([[2, 11]])
    v, k, src = merge_best(va, ka, vb, kb, 4)
    assert v.tolist() == [[3.0, 3.0, 1.0, 1.0]]
    assert k.tolist() == [[10, 11, 2, 4]]
    assert src.tolist() == [[0, 4, 3, 1]]


def test_streaming_topk_equals_brute_force_for_any_batching():
    g = torch.Generator().manual_seed(1)
    U, N, k, W = 6, 300, 8, 3
    x = torch.randint(0, 6, (U, N), generator=g).float()  # heavy ties
    keys = torch.arange(N) * 7 + 3  # increasing, like corpus keys
    results = []
    for cuts in ([0, N], [0, 1, 2, 50, 51, 200, N], list(range(0, N + 1, 13)) + [N]):
        t = TopK(U, k, W)
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a == b:
                continue
            v, c = topk_rows(x[:, a:b], k)

            def fetch(u, j, c=c, a=a):
                col = c[u, j] + a
                return (col[:, None].repeat(1, W).int(), x[u, col][:, None].repeat(1, W), col)
            t.update(v, keys[a:b][c], fetch)
        results.append(t.canonicalize())
        for u in range(U):
            bv, bc = brute(x[u].tolist(), k)
            assert t.vals[u].tolist() == bv
            assert t.keys[u].tolist() == keys[bc].tolist()
            assert t.extra[u].tolist() == bc  # the window travelled with its example
            assert t.ctx_tok[u, :, 0].tolist() == bc
    # k larger than the data: empty slots stay empty
    t = TopK(2, 10, 1)
    v, c = topk_rows(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), 10)
    t.update(v, c, lambda u, j: (torch.zeros(len(u), 1, dtype=torch.int32), torch.zeros(len(u), 1), u))
    assert t.filled().tolist() == [2, 2]
    assert t.canonicalize().keys[0, 2:].eq(EMPTY_KEY).all()


def test_merge_of_halves_equals_whole():
    g = torch.Generator().manual_seed(2)
    U, N, k = 4, 120, 10
    x = torch.randint(0, 4, (U, N), generator=g).float()
    keys = torch.arange(N)

    def run(cols):
        t = TopK(U, k, 1)
        v, c = topk_rows(x[:, cols], k)
        t.update(v, keys[cols][c], lambda u, j: (torch.zeros(len(u), 1, dtype=torch.int32),
                                                  torch.zeros(len(u), 1), keys[cols][c[u, j]]))
        return t
    whole = run(torch.arange(N))
    a, b = run(torch.arange(0, N, 2)), run(torch.arange(1, N, 2))
    a.merge(b)
    a.canonicalize(), whole.canonicalize()
    assert torch.equal(a.vals, whole.vals) and torch.equal(a.keys, whole.keys) and torch.equal(a.extra, whole.extra)
