"""Chunked top-k against dense torch.topk on the full matrix."""

import pytest
import torch

from circuitbook.circuits.screened_topk import chunked_tops, factored_circuit_tops, factored_row_fn


def _dense_pairs(M, n, largest):
    v, i = M.flatten().topk(n, largest=largest)
    return i // M.shape[1], i % M.shape[1], v


def test_chunked_tops_match_dense():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(37, 5, generator=g), torch.randn(5, 23, generator=g)
    bias = torch.randn(23, generator=g)
    M = A @ B + bias
    # max_elems 50 -> two rows per chunk: exercises the running merge across 19 chunks
    t = chunked_tops(factored_row_fn(A, B, bias), 37, 23, k=4, n_pairs=30, bottom=True, norms=True, lse=True,
                     max_elems=50)
    tv, ti = M.topk(4, dim=-1)
    bv, bi = M.topk(4, dim=-1, largest=False)
    assert torch.equal(t.top.ids, ti) and torch.allclose(t.top.vals, tv)
    assert torch.equal(t.bottom.ids, bi) and torch.allclose(t.bottom.vals, bv)
    for pairs, largest in ((t.top_pairs, True), (t.bottom_pairs, False)):
        r, c, v = _dense_pairs(M, 30, largest)
        assert torch.equal(pairs.rows, r) and torch.equal(pairs.cols, c) and torch.allclose(pairs.vals, v)
    assert torch.allclose(t.norms, M.norm(dim=-1))
    assert torch.allclose(t.lse, M.logsumexp(-1))


def test_global_pairs_exact_when_one_row_holds_them_all():
    # every one of the top-10 pairs sits in row 3: per-row top-1 candidates would miss them
    M = torch.randn(12, 40)
    M[3] += 100
    t = chunked_tops(lambda s, e: M[s:e], 12, 40, k=1, n_pairs=10, bottom=False, max_elems=40)
    assert (t.top_pairs.rows == 3).all()
    assert torch.equal(t.top_pairs.cols, M[3].topk(10).indices)
    assert t.top.ids.shape == (12, 1) and t.bottom is None and t.bottom_pairs is None


def test_factored_circuit_tops_and_progress():
    A, B = torch.randn(9, 3), torch.randn(3, 9)
    seen = []
    ct = factored_circuit_tops("x", A, B, k=2, n_pairs=5, bottom_pairs=False, max_elems=18, progress=seen.append)
    assert seen == [2, 4, 6, 8, 9]
    assert torch.equal(ct.top.ids, (A @ B).topk(2, -1).indices) and ct.bottom_pairs is None
    assert ct.top_pairs.as_list()[0][2] == float((A @ B).max())


@pytest.mark.parametrize("screen", [torch.bfloat16, torch.float32])
def test_bf16_screening_is_exact_including_fallback_rows(screen):
    from circuitbook.circuits.screened_topk import fast_factored_tops

    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(300, 16, generator=g), torch.randn(16, 700, generator=g)
    M = A @ B
    for margin in (16, 0):  # margin 0: most rows cannot be certified and are recomputed in float32
        st = {}
        t = fast_factored_tops(A, B, k=4, n_pairs=25, bottom_pairs=True, margin=margin, max_elems=7000, stats=st,
                               screen=screen)
        assert torch.equal(t.top.ids, M.topk(4, dim=-1).indices)
        torch.testing.assert_close(t.top.vals, M.topk(4, dim=-1).values)
        for pairs, largest in ((t.top_pairs, True), (t.bottom_pairs, False)):
            assert torch.equal(pairs.rows * 700 + pairs.cols, M.flatten().topk(25, largest=largest).indices)
        assert (st["fallback_rows"] > 100) == (margin == 0)
        assert st["screen"] == str(screen).removeprefix("torch.")


def test_screen_bound_holds_and_float32_is_much_tighter():
    from circuitbook.circuits.basis import CircuitError
    from circuitbook.circuits.screened_topk import screen_bound

    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(200, 64, generator=g), torch.randn(64, 500, generator=g)
    exact = A.double() @ B.double()
    for screen in (torch.bfloat16, torch.float32):
        d = screen_bound(A, B, screen)
        err = ((A.to(screen) @ B.to(screen)).double() - exact).abs().amax(1)
        assert (err <= d.double()).all()
    assert (screen_bound(A, B, torch.float32) * 1000 < screen_bound(A, B, torch.bfloat16)).all()
    with pytest.raises(CircuitError, match="float16"):
        screen_bound(A, B, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_extremes_kernel_matches_dense(dtype):
    from circuitbook.circuits.screened_topk import row_extremes

    g = torch.Generator().manual_seed(3)
    M = (torch.randn(57, 301, generator=g) * 10).to(dtype)
    F = M.float()
    (tv, ti), (bv, bi), mx, mn, nr = row_extremes(M, 7, 5)
    assert torch.equal(tv, F.topk(7, dim=-1).values) and torch.equal(F.gather(1, ti), tv)
    assert torch.equal(bv, F.topk(5, dim=-1, largest=False).values) and torch.equal(F.gather(1, bi), bv)
    assert torch.equal(mx, F.amax(-1)) and torch.equal(mn, F.amin(-1))
    torch.testing.assert_close(nr, F.norm(dim=-1))
    if dtype == torch.float32:  # no ties: the very columns of a dense sort
        assert torch.equal(ti, F.topk(7, dim=-1).indices) and torch.equal(bi, F.topk(5, -1, largest=False).indices)
    assert row_extremes(M, 0, 0)[0][0].shape == (57, 0)
