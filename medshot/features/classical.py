"""Weights-free dense descriptors: multi-scale Gaussian derivatives plus MIND-style self-similarity.

Why these two: Gaussian-derivative jets describe local shape (blobs, edges, ridges) at several
scales and are what classical keypoint descriptors build on; MIND (Heinrich et al. 2012) compares a
patch with its neighbours, so it survives contrast changes between scanners and subjects. Each
channel is standardised per image and every descriptor is L2-normalised, so cosine similarity is the
match score exactly as for a foundation-model backbone.

Written once for images of any dimension. The defaults differ by dimension only in how many
scales and neighbours there are: a 2D image gets four scales and MIND at distances 2 and 4 in four
directions; a volume three scales and MIND at distance 2 to its six axis neighbours (a volume's
channels cost its voxel count each).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from .base import FeatureMap

SCALES = {2: (1.0, 2.0, 4.0, 8.0), 3: (1.0, 2.0, 4.0)}
MIND_DISTANCES = {2: (2, 4), 3: (2,)}
MIND_OFFSETS = {2: ((0, 1), (1, 0), (1, 1), (1, -1)),
                3: tuple(tuple(sign * (a == axis) for a in range(3)) for axis in range(3) for sign in (-1, 1))}


def gaussian_jet(image: np.ndarray, scales) -> Iterator[np.ndarray]:
    """Per scale: the smoothed image, its ``ndim`` first and ``ndim (ndim + 1) / 2`` second derivatives
    (scale-normalised)."""
    for s in scales:
        smooth = ndimage.gaussian_filter(image, s, mode="nearest")
        grads = np.gradient(smooth) if image.ndim > 1 else [np.gradient(smooth)]
        yield smooth
        for g in grads:
            yield s * g
        for a, b in itertools.combinations_with_replacement(range(image.ndim), 2):
            yield s * s * np.gradient(grads[a], axis=b)


def mind_channels(image: np.ndarray, distances, offsets, sigma: float = 1.0) -> Iterator[np.ndarray]:
    """MIND self-similarity: for each distance, one channel per neighbour ``offset`` (unit steps)."""
    for d in distances:
        dists = np.empty((len(offsets), *image.shape), np.float32)
        for k, offset in enumerate(offsets):
            shifted = ndimage.shift(image, [d * o for o in offset], order=0, mode="nearest")
            dists[k] = ndimage.gaussian_filter((image - shifted) ** 2, sigma * d / 2, mode="nearest")
        variance = np.maximum(dists.mean(axis=0), 1e-4 + 0.1 * dists.mean())
        for ch in dists:
            yield np.exp(-ch / variance)


def classical_features(image: np.ndarray, scales=None, mind_distances=None) -> np.ndarray:
    """Dense descriptors of an image or volume in [0, 1]: ``(C, M, N[, P])`` float32, unit length per pixel.

    Channels are written one by one into a preallocated array, so the peak memory is one copy of
    the descriptors plus a few images (which matters for volumes).
    """
    image = np.asarray(image, np.float32)  # gray: readers turn colour into gray before this
    d = image.ndim
    scales = SCALES[d] if scales is None else tuple(scales)
    distances = MIND_DISTANCES[d] if mind_distances is None else tuple(mind_distances)
    offsets = MIND_OFFSETS[d]
    n = (1 + d + d * (d + 1) // 2) * len(scales) + len(offsets) * len(distances)
    data = np.empty((n, *image.shape), np.float32)
    channels = itertools.chain(gaussian_jet(image, scales), mind_channels(image, distances, offsets))
    for i, ch in enumerate(channels):
        # Channel standardisation per image evens out contrast between scanners.
        data[i] = (ch - ch.mean()) / max(float(ch.std()), 1e-6)
    norm = np.sqrt(np.einsum("c...,c...->...", data, data))
    data /= np.maximum(norm, 1e-8)
    return data


class ClassicalBackbone:
    """The embedded default backend: no weights, works on any machine, on 2D images and volumes.

    Features come at stride 1 of the image it is given (pixel level already).
    """

    name = "classical"
    # Descriptors at stride 1 of whatever grid it is given, at that grid's scale: given a coarse image
    # it describes context-sized structure (used by the global pose search).
    pixel_level = True

    def __init__(self, scales=None, mind_distances=None):
        self.scales = None if scales is None else tuple(float(s) for s in scales)
        self.mind_distances = None if mind_distances is None else tuple(int(d) for d in mind_distances)

    def __call__(self, image: np.ndarray) -> FeatureMap:
        data = classical_features(image, self.scales, self.mind_distances)
        return FeatureMap(data, (1.0,) * (data.ndim - 1), (0.0,) * (data.ndim - 1), tuple(data.shape[1:]))
