"""Weights-free dense descriptors: multi-scale Gaussian derivatives plus MIND-style self-similarity.

Why these two: Gaussian-derivative jets describe local shape (blobs, edges, ridges) at several
scales and are what classical keypoint descriptors build on; MIND (Heinrich et al. 2012) compares a
patch with its neighbours, so it survives contrast changes between scanners and subjects. Each
channel is standardised per image and every descriptor is L2-normalised, so cosine similarity is the
match score exactly as for a foundation-model backbone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import FeatureMap, l2_normalize, to_gray

DEFAULT_SCALES = (1.0, 2.0, 4.0, 8.0)


def gaussian_jet(image: np.ndarray, scales=DEFAULT_SCALES) -> list[np.ndarray]:
    """Smoothed intensity, first and second derivatives at each scale (scale-normalised)."""
    out = []
    for s in scales:
        smooth = ndimage.gaussian_filter(image, s, mode="nearest")
        gy, gx = np.gradient(smooth)
        gyy, gyx = np.gradient(gy)
        _, gxx = np.gradient(gx)
        out += [smooth, s * gx, s * gy, s * s * gxx, s * s * gyy, s * s * gyx]
    return out


def mind_channels(image: np.ndarray, distances=(2, 4), sigma: float = 1.0) -> list[np.ndarray]:
    """Self-similarity to the 4-neighbourhood at each distance (MIND, six channels per distance pair)."""
    out = []
    for d in distances:
        dists = []
        for dy, dx in ((0, d), (d, 0), (d, d), (d, -d)):
            shifted = ndimage.shift(image, (dy, dx), order=0, mode="nearest")
            dists.append(ndimage.gaussian_filter((image - shifted) ** 2, sigma * d / 2, mode="nearest"))
        dists = np.stack(dists)
        variance = np.maximum(dists.mean(axis=0), 1e-4 + 0.1 * dists.mean())
        out += list(np.exp(-dists / variance))
    return out


def classical_features(image: np.ndarray, scales=DEFAULT_SCALES, mind_distances=(2, 4)) -> np.ndarray:
    """Dense descriptors of an image in [0, 1]: ``(C, H, W)`` float32, unit length per pixel."""
    gray = to_gray(image).astype(np.float32)
    channels = gaussian_jet(gray, scales) + mind_channels(gray, mind_distances)
    data = np.stack(channels).astype(np.float32)
    mean = data.mean(axis=(1, 2), keepdims=True)
    std = data.std(axis=(1, 2), keepdims=True)
    data = (data - mean) / np.maximum(std, 1e-6)
    return l2_normalize(data, axis=0)


class ClassicalBackbone:
    """The embedded default backend: no weights, works on any machine.

    Features come at stride 1 of the image it is given (pixel level already).
    """

    name = "classical"
    # Descriptors at stride 1 of whatever grid it is given, at that grid's scale: given a coarse image
    # it describes context-sized structure (used by the global pose search).
    pixel_level = True

    def __init__(self, scales=DEFAULT_SCALES, mind_distances=(2, 4)):
        self.scales = tuple(float(s) for s in scales)
        self.mind_distances = tuple(int(d) for d in mind_distances)

    def __call__(self, image: np.ndarray) -> FeatureMap:
        data = classical_features(image, self.scales, self.mind_distances)
        return FeatureMap(data, (1.0, 1.0), (0.0, 0.0), tuple(data.shape[1:]))  # type: ignore[arg-type]
