import numpy as np
import torch

from circuitbook.scan.histogram import HALF, PowerHistogram, bin_index, edges_for, level


def test_level_is_the_smallest_power_of_two_above():
    x = torch.tensor([0.0, 0.3, 0.5, 1.0, 1.5, 2.0, 1e-30])
    e = level(x).tolist()
    assert e[1:6] == [-1, 0, 1, 1, 2]  # 0.5 -> 2**0 (strictly above), 1.0 -> 2**1
    assert e[0] == e[6] == -24


def test_bins_are_left_open_right_closed_and_count_firing():
    exp = torch.tensor([0])  # M = 1, w = 1/64
    w = 1 / HALF
    x = torch.tensor([[0.0, -0.0, w, w + 1e-6, -w, 0.999, -0.999, 1e-9]])
    b = (bin_index(x, exp) - HALF).tolist()[0]
    assert b == [-1, -1, 0, 1, -2, 63, -64, 0]
    h = PowerHistogram(1)
    h.raise_level(exp)
    h.add(bin_index(x, exp))
    assert h.counts[0, HALF:].sum() == (x > 0).sum()  # columns >= HALF hold exactly the values > 0
    edges = edges_for(0)
    assert len(edges) == 2 * HALF + 1 and edges[HALF] == 0.0


def test_streaming_with_rising_levels_equals_binning_at_the_end():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(3, 50, generator=g) * s for s in (0.01, 0.3, 5.0, 0.2, 40.0)]
    h = PowerHistogram(3)
    for c in chunks:
        h.raise_level(torch.maximum(h.exp, level(c.abs().amax(1))))
        h.add(bin_index(c, h.exp))
    x = torch.cat(chunks, 1)
    e = level(x.abs().amax(1))
    assert torch.equal(h.exp, e)
    for u in range(3):
        ref = np.bincount((bin_index(x[u:u + 1], e[u:u + 1]) - 0).numpy().ravel(), minlength=2 * HALF)
        assert h.counts[u].tolist() == ref.tolist()
    # merging two halves gives the same counts
    a, b = PowerHistogram(3), PowerHistogram(3)
    for hh, cs in ((a, chunks[:2]), (b, chunks[2:])):
        for c in cs:
            hh.raise_level(torch.maximum(hh.exp, level(c.abs().amax(1))))
            hh.add(bin_index(c, hh.exp))
    a.merge(b)
    assert torch.equal(a.counts, h.counts) and torch.equal(a.exp, h.exp)
