"""Log binning equals a plain loop transcription of Amir et al.'s reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from medshot.features.logbin import box_mean3, log_bin


def loop_log_bin(x: np.ndarray, hierarchy: int = 2) -> np.ndarray:
    """Cell by cell, bin by bin, as in the paper's code: 1x1 and 3x3 average pools (count_include_pad=False),
    offsets of 3**k around each cell, the centre only at the first level, out-of-grid cells clamped."""
    C, h, w = x.shape
    pools = []
    for k in range(hierarchy):
        r = 3 ** k // 2
        pool = np.zeros_like(x, dtype=np.float64)
        for y in range(h):
            for xx in range(w):
                pool[:, y, xx] = x[:, max(0, y - r):y + r + 1, max(0, xx - r):xx + r + 1].mean(axis=(1, 2))
        pools.append(pool)
    out = np.zeros((C * (1 + 8 * hierarchy), h, w))
    for y in range(h):
        for xx in range(w):
            part = 0
            for k in range(hierarchy):
                size = 3 ** k
                for i in range(y - size, y + size + 1, size):
                    for j in range(xx - size, xx + size + 1, size):
                        if i == y and j == xx and k != 0:
                            continue
                        ii, jj = min(max(i, 0), h - 1), min(max(j, 0), w - 1)
                        out[part * C:(part + 1) * C, y, xx] = pools[k][:, ii, jj]
                        part += 1
    return out


@pytest.mark.parametrize("shape", [(3, 7, 9), (2, 1, 1), (4, 2, 5), (1, 4, 1), (5, 8, 8)])
def test_log_bin_equals_loop(shape):
    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    got = log_bin(x)
    assert got.shape == (17 * shape[0], *shape[1:]) and got.dtype == np.float32
    np.testing.assert_allclose(got, loop_log_bin(x), rtol=1e-5, atol=1e-6)


def test_box_mean_ignores_outside_cells():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    m = box_mean3(x)
    assert m[0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert m[0, 1, 1] == pytest.approx(x[0, :, :3].mean())


def test_first_bins_are_the_neighbourhood():
    x = np.random.default_rng(0).normal(size=(2, 6, 6)).astype(np.float32)
    out = log_bin(x)
    np.testing.assert_array_equal(out[4 * 2:5 * 2], x)  # bin 4: the cell itself
    np.testing.assert_array_equal(out[0:2, 1:, 1:], x[:, :-1, :-1])  # bin 0: the up-left neighbour
