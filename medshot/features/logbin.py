"""Neighbourhood log binning of a dense feature grid (Amir et al., "Deep ViT Features as Dense Visual
Descriptors", 2021).

Each cell's descriptor becomes 17 sub-descriptors: the 3x3 neighbourhood of cells at the first level,
and the 8 neighbours at offset 3 of a 3x3-average-pooled map at the second. Far context is thereby
summarised coarsely and near context finely, which makes descriptors more distinctive without
widening the receptive field of the network. Cells outside the grid are clamped to the border, and the
3x3 average ignores out-of-grid cells (``count_include_pad=False``), as in the reference code.

Only grid-sized temporaries are made: the output (17x the input) is the one large array, written bin
by bin. Upsampling to pixels is the pipeline's job (:meth:`FeatureMap.resampled`).
"""

from __future__ import annotations

import numpy as np

#: (pooling window, offset) of each level; the centre of every level after the first is skipped.
LEVELS = ((1, 1), (3, 3))
NUM_BINS = 17


def box_mean3(x: np.ndarray) -> np.ndarray:
    """3x3 average over the last two axes, ignoring cells outside the grid.

    Parameters
    ----------
    x : ndarray, shape (C, h, w)

    Returns
    -------
    ndarray, shape (C, h, w), float32
    """
    x = np.asarray(x, dtype=np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    # Separable window sums on the zero-padded grid; the division by the number of in-grid cells
    # turns the zero padding into count_include_pad=False.
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    sums = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    h, w = x.shape[1:]
    count_y = np.full(h, 3.0, np.float32)
    count_x = np.full(w, 3.0, np.float32)
    count_y[[0, -1]] -= 1
    count_x[[0, -1]] -= 1
    if h == 1:
        count_y[:] = 1
    if w == 1:
        count_x[:] = 1
    sums /= count_y[:, None] * count_x[None, :]
    return sums


def log_bin(features: np.ndarray) -> np.ndarray:
    """Log-binned descriptors of a feature grid.

    Parameters
    ----------
    features : ndarray, shape (C, h, w)

    Returns
    -------
    ndarray, shape (17 * C, h, w), float32
        Bin ``k`` occupies channels ``k*C:(k+1)*C``. Bins 0-8 are the cells at offsets
        ``(dy, dx)`` in {-1, 0, 1}^2 (row-major); bins 9-16 the 3x3 means at offsets in {-3, 0, 3}^2
        without the centre.
    """
    x = np.asarray(features, dtype=np.float32)
    C, h, w = x.shape
    out = np.empty((NUM_BINS * C, h, w), np.float32)
    k = 0
    for level, (window, step) in enumerate(LEVELS):
        source = x if window == 1 else box_mean3(x)
        for dy in (-step, 0, step):
            rows = np.take(source, np.clip(np.arange(h) + dy, 0, h - 1), axis=1)
            for dx in (-step, 0, step):
                if level > 0 and dy == 0 and dx == 0:
                    continue
                # mode="clip" writes straight into the output slice (no buffered copy).
                np.take(rows, np.clip(np.arange(w) + dx, 0, w - 1), axis=2, out=out[k * C:(k + 1) * C], mode="clip")
                k += 1
    return out
