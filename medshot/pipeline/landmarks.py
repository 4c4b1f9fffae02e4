"""Landmarks re-matched at the images' own resolution, after the working-grid match.

The working grid (at most ``work_size`` pixels a side) is coarser than a large image: on a
1024-pixel cephalogram one working pixel is four image pixels. Each landmark is therefore matched
once more on small crops of the full-resolution images: the template's neighbourhood of the
landmark against the target's neighbourhood of where the working-grid match put it, both described
by the pixel-level (weights-free) descriptors at the same scale. The crops are the same kind of
neighbourhood, so the descriptors' per-image standardisation treats both alike.

Only for nearly upright placements of about the template's size (descriptors are not
rotation-invariant), and only where the image is finer than the working grid. Points are array
indices (any dimension).
"""

from __future__ import annotations

import numpy as np

from ..core.feature_map import FeatureMap
from ..features.classical import classical_features
from ..match.points import match_points
from ..match.rotations import turn_deg


def _crop(image: np.ndarray, center: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """A crop of side ``2 radius + 1`` around the nearest pixel to ``center`` (edges repeated), and its origin."""
    at = np.clip(np.round(center).astype(int), 0, np.array(image.shape) - 1)
    padded = np.pad(image, radius, mode="edge")
    return padded[tuple(slice(a, a + 2 * radius + 1) for a in at)], (at - radius).astype(float)


class FineLandmarks:
    """The template's full-resolution neighbourhood of every landmark, described once.

    Parameters
    ----------
    image : ndarray (M, N[, P])
        The template at full resolution, intensities in [0, 1].
    points : ndarray (K, ndim)
        Landmarks in template image indices.
    step : float
        Template image pixels per working pixel.
    context, search, patch : float
        Crop radius, search radius and descriptor patch radius, in working pixels.
    """

    def __init__(self, image: np.ndarray, points: np.ndarray, step: float, context: float = 8.0,
                 search: float = 3.0, patch: float = 1.5):
        self.step = float(step)
        self.radius = max(4, int(round(context * step)))
        self.search = search * step
        self.patch = patch * step
        self.queries = []
        for p in np.asarray(points, float).reshape(-1, image.ndim):
            crop, origin = _crop(image, p, self.radius)
            self.queries.append((unit_map(classical_features(crop)), p - origin))

    def refine(self, target: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Landmarks ``(K, ndim)`` (target image indices) moved to their full-resolution match."""
        out = np.asarray(points, float).reshape(-1, target.ndim).copy()
        radius = self.radius + int(np.ceil(self.search))
        for i, (fmap, query) in enumerate(self.queries):
            crop, origin = _crop(target, out[i], radius)
            m = match_points(fmap, unit_map(classical_features(crop)), query[None], initial=out[i:i + 1] - origin,
                             radius=self.search, prior_sigma=self.search, patch_radius=self.patch,
                             patch_step=max(1.0, self.step / 2))
            out[i] = m.points[0] + origin
        return out


def unit_map(features: np.ndarray) -> FeatureMap:
    """Unit descriptors ``(C, M, N[, P])`` on a grid of their own as a :class:`FeatureMap`."""
    d = features.ndim - 1
    return FeatureMap(features, (1.0,) * d, (0.0,) * d, tuple(features.shape[1:]))


def upright(matrix: np.ndarray, max_turn_deg: float = 20.0, max_scale_change: float = 1.25) -> bool:
    """Whether an affine keeps the template nearly upright and of nearly its own size."""
    d = matrix.shape[0] - 1
    sv = np.linalg.svd(matrix[:d, :d], compute_uv=False)
    return abs(turn_deg(matrix[:d, :d])) <= max_turn_deg and sv[0] <= max_scale_change and \
        sv[-1] >= 1 / max_scale_change
