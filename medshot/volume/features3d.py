"""Descriptors of a volume on its working grid.

Two routes, both ending in unit-length descriptors ``(C, X, Y, Z)`` on the working grid:

* **weights-free 3D** (:func:`classical_features_3d`): multi-scale Gaussian-derivative jets (value,
  gradient, Hessian) and MIND self-similarity to the six axis neighbours, the 3D versions of the
  2D classical backbone's channels.
* **any 2D backbone, per slice** (:func:`slice_features`): each axial slice of the working volume
  goes through the backbone once, its features are resampled to the working grid and immediately
  projected on a small PCA basis, so only ``reduced_dims`` channels per voxel are ever held (a
  ViT's 768 channels for every slice of a CT would not fit in memory).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from ..features.base import Backbone, l2_normalize

DEFAULT_SCALES_3D = (1.0, 2.0, 4.0)


def gaussian_jet_3d(volume: np.ndarray, scales=DEFAULT_SCALES_3D) -> Iterator[np.ndarray]:
    """Smoothed value, 3 first and 6 second scale-normalised derivatives at each scale (10 per scale)."""
    for s in scales:
        smooth = ndimage.gaussian_filter(volume, s, mode="nearest")
        grads = np.gradient(smooth)
        yield smooth
        for g in grads:
            yield s * g
        for a in range(3):
            for b in range(a, 3):
                yield s * s * np.gradient(grads[a], axis=b)
        del grads, smooth


def mind_channels_3d(volume: np.ndarray, distances=(2,), sigma: float = 1.0) -> Iterator[np.ndarray]:
    """MIND self-similarity to the six axis neighbours at each distance (six channels per distance)."""
    for d in distances:
        dists = np.empty((6, *volume.shape), np.float32)
        n = 0
        for axis in range(3):
            for sign in (-1, 1):
                shifted = ndimage.shift(volume, [sign * d if a == axis else 0 for a in range(3)], order=0,
                                        mode="nearest")
                dists[n] = ndimage.gaussian_filter((volume - shifted) ** 2, sigma * d / 2, mode="nearest")
                n += 1
        variance = np.maximum(dists.mean(axis=0), 1e-4 + 0.1 * dists.mean())
        for ch in dists:
            yield np.exp(-ch / variance)


def n_classical_channels(scales=DEFAULT_SCALES_3D, mind_distances=(2,)) -> int:
    return 10 * len(scales) + 6 * len(mind_distances)


def classical_features_3d(volume: np.ndarray, scales=DEFAULT_SCALES_3D, mind_distances=(2,)) -> np.ndarray:
    """Dense descriptors of a volume in [0, 1]: ``(C, X, Y, Z)`` float32, unit length per voxel.

    Channels are written one by one into a preallocated array so the peak memory is one copy of
    the descriptors plus a few volumes.
    """
    v = np.asarray(volume, np.float32)
    data = np.empty((n_classical_channels(scales, mind_distances), *v.shape), np.float32)
    channels = itertools.chain(gaussian_jet_3d(v, scales), mind_channels_3d(v, mind_distances))
    for i, ch in enumerate(channels):
        # Channel standardisation per volume (as in 2D) evens out contrast between scanners.
        data[i] = (ch - ch.mean()) / max(float(ch.std()), 1e-6)
    norm = np.sqrt(np.einsum("c...,c...->...", data, data))
    data /= np.maximum(norm, 1e-8)
    return data


def fit_basis(data: np.ndarray, dims: int, max_samples: int = 40000) -> np.ndarray | None:
    """PCA basis ``(dims, C)`` of descriptors ``(C, ...)``; None when ``C <= dims``."""
    C = data.shape[0]
    if C <= dims:
        return None
    x = data.reshape(C, -1)
    step = max(1, x.shape[1] // max_samples)
    x = x[:, ::step].astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    u, _, _ = np.linalg.svd(x @ x.T)
    return u[:, :dims].T.astype(np.float32)


def project(data: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    if basis is None:
        return l2_normalize(data, axis=0)
    return l2_normalize(np.tensordot(basis, data, axes=(1, 0)), axis=0)


# ------------------------------------------------------------------------------------------------
# 2D backbones, slice by slice
# ------------------------------------------------------------------------------------------------


def _to_display(sl: np.ndarray) -> np.ndarray:
    """Canonical axial slice (X=R, Y=A) -> radiological view (anterior up, patient right on the left)."""
    return sl.T[::-1, ::-1]


def _from_display(data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_display` for ``(C, H, W)`` feature maps."""
    return np.ascontiguousarray(np.swapaxes(data[:, ::-1, ::-1], 1, 2))


def slice_features(volume: np.ndarray, backbone: Backbone, reduced_dims: int = 24,
                   basis: np.ndarray | None = None, slice_side: int = 224, fit_slices: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-axial-slice descriptors of a 2D backbone on the working volume, streamed.

    Parameters
    ----------
    volume : ndarray (X, Y, Z) in [0, 1]
        Working-grid volume (canonical orientation).
    backbone : Backbone
        Any 2D backbone; each slice is shown to it once, in radiological orientation, resized to
        ``slice_side`` on its longest side (unless it wants full-resolution input).
    basis : ndarray (reduced_dims, C) or None
        PCA basis to project on; None fits one on ``fit_slices`` evenly spaced slices first (those
        slices' features are kept, not recomputed).

    Returns
    -------
    features : ndarray (reduced_dims, X, Y, Z)
    basis : the basis used
    """
    X, Y, Z = volume.shape
    cache: dict[int, np.ndarray] = {}

    def run(k: int) -> np.ndarray:
        img = _to_display(volume[:, :, k])  # (Y, X)
        H, W = img.shape
        f = slice_side / max(H, W)
        given = img
        if not getattr(backbone, "full_resolution_input", False):
            given = resize(img, (max(8, round(H * f)), max(8, round(W * f))), order=1,
                           preserve_range=True, anti_aliasing=f < 1).astype(np.float32)
        fmap = backbone(given)
        if fmap.image_shape != given.shape:
            fmap = fmap.rescaled(given.shape)
        fmap = fmap.rescaled((H, W)).resampled((H, W))
        return _from_display(fmap.data)  # (C, X, Y)

    fitted = basis
    if fitted is None:
        picks = np.unique(np.linspace(0, Z - 1, min(fit_slices, Z)).round().astype(int))
        for k in picks:
            cache[int(k)] = run(int(k))
        sample = np.concatenate([c.reshape(c.shape[0], -1) for c in cache.values()], axis=1)
        fitted = fit_basis(sample, reduced_dims)
    out = None
    for k in range(Z):
        full = cache.pop(k) if k in cache else run(k)
        red = project(full, fitted)
        if out is None:
            out = np.empty((red.shape[0], X, Y, Z), np.float32)
        out[:, :, :, k] = red
        if progress is not None:
            progress(k + 1, Z)
    assert out is not None
    return out, fitted
