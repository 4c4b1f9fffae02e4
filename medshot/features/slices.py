"""Any 2D backbone on a volume: slice by slice, reduced on the fly.

Each axial slice of the working volume goes through the backbone once (shown in radiological
orientation, resized to ``slice_side`` on its longest side unless the backbone wants full
resolution), its features are resampled to the working grid and immediately projected on a small
PCA basis, so only ``reduced_dims`` channels per voxel are ever held (a ViT's 768 channels for every
slice of a CT would not fit in memory).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..core.geometry import from_radiological, pca_basis, project, radiological, resize_image
from .base import Backbone


def _from_display(data: np.ndarray) -> np.ndarray:
    """:func:`~medshot.core.geometry.from_radiological` of each channel of ``(C, H, W)`` feature maps."""
    # from_radiological reverses every axis, so the channel axis comes out last: (C, H, W) -> (W, H, C)
    return np.ascontiguousarray(np.moveaxis(from_radiological(data), -1, 0))


def slice_features(volume: np.ndarray, backbone: Backbone, reduced_dims: int = 24,
                   basis: np.ndarray | None = None, slice_side: int = 224, fit_slices: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-axial-slice descriptors of a 2D backbone on a working volume, streamed.

    Parameters
    ----------
    volume : ndarray (I, J, K) in [0, 1]
        Working-grid volume (canonical orientation).
    backbone : Backbone
        Any 2D backbone.
    basis : ndarray (reduced_dims, C) or None
        PCA basis to project on; None fits one on ``fit_slices`` evenly spaced slices first (those
        slices' features are kept, not recomputed).

    Returns
    -------
    features : ndarray (reduced_dims, I, J, K)
    basis : the basis used
    """
    I, J, K = volume.shape
    cache: dict[int, np.ndarray] = {}

    def run(k: int) -> np.ndarray:
        img = radiological(volume[:, :, k])  # (J, I)
        H, W = img.shape
        f = slice_side / max(H, W)
        given = img
        if not getattr(backbone, "full_resolution_input", False):
            given = resize_image(img, (max(8, round(H * f)), max(8, round(W * f))))
        fmap = backbone(given)
        if fmap.image_shape != given.shape:
            fmap = fmap.rescaled(given.shape)
        fmap = fmap.rescaled((H, W)).resampled((H, W))
        return _from_display(fmap.data)  # (C, I, J)

    fitted = basis
    if fitted is None:
        picks = np.unique(np.linspace(0, K - 1, min(fit_slices, K)).round().astype(int))
        for k in picks:
            cache[int(k)] = run(int(k))
        sample = np.concatenate([c.reshape(c.shape[0], -1) for c in cache.values()], axis=1)
        fitted = pca_basis(sample, reduced_dims)
    out = None
    for k in range(K):
        full = cache.pop(k) if k in cache else run(k)
        red = project(fitted, full)
        if out is None:
            out = np.empty((red.shape[0], I, J, K), np.float32)
        out[:, :, :, k] = red
        if progress is not None:
            progress(k + 1, K)
    assert out is not None
    return out, fitted
