"""Landmarks re-matched at the images' own resolution, after the working-grid match.

The working grid (at most ``work_size`` pixels a side) is coarser than a large image: on a
1024-pixel cephalogram one working pixel is four image pixels. Each landmark is therefore matched
once more on small crops of the full-resolution images: the template's neighbourhood of the
landmark against the target's neighbourhood of where the working-grid match put it, both described
by the pixel-level (weights-free) descriptors at the same scale. The crops are the same size, so
the descriptors' per-image standardisation treats both alike.

Only for nearly upright placements of about the template's size (descriptors are not
rotation-invariant), and only where the image is finer than the working grid.
"""

from __future__ import annotations

import numpy as np

from .features.base import FeatureMap
from .features.classical import classical_features
from .match.points import match_points


def _crop(image: np.ndarray, center_xy: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``(2r+1, 2r+1)`` crop around the nearest pixel to ``center_xy`` (edges repeated), and its origin (x, y)."""
    x, y = int(round(center_xy[0])), int(round(center_xy[1]))
    padded = np.pad(image, radius, mode="edge")
    H, W = image.shape
    x, y = int(np.clip(x, 0, W - 1)), int(np.clip(y, 0, H - 1))
    return padded[y: y + 2 * radius + 1, x: x + 2 * radius + 1], np.array([x - radius, y - radius], float)


class FineLandmarks:
    """The template's full-resolution neighbourhood of every landmark, described once.

    Parameters
    ----------
    image : ndarray (H, W)
        The template at full resolution, intensities in [0, 1].
    landmarks_xy : ndarray (N, 2)
        Landmarks in template image pixels (x, y).
    step : float
        Template image pixels per working pixel.
    context, search, patch : float
        Crop radius, search radius and descriptor patch radius, in working pixels.
    """

    def __init__(self, image: np.ndarray, landmarks_xy: np.ndarray, step: float, context: float = 8.0,
                 search: float = 3.0, patch: float = 1.5):
        self.step = float(step)
        self.radius = max(4, int(round(context * step)))
        self.search = search * step
        self.patch = patch * step
        self.queries = []
        for p in np.asarray(landmarks_xy, float).reshape(-1, 2):
            crop, origin = _crop(image, p, self.radius)
            fmap = FeatureMap(classical_features(crop), (1.0, 1.0), (0.0, 0.0), crop.shape)
            self.queries.append((fmap, p - origin))

    def refine(self, target: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Landmarks ``xy`` ``(N, 2)`` (target image pixels) moved to their full-resolution match."""
        out = np.asarray(xy, float).reshape(-1, 2).copy()
        radius = self.radius + int(np.ceil(self.search))
        for i, (fmap, query) in enumerate(self.queries):
            crop, origin = _crop(target, out[i], radius)
            target_map = FeatureMap(classical_features(crop), (1.0, 1.0), (0.0, 0.0), crop.shape)
            start = out[i:i + 1] - origin
            m = match_points(fmap, target_map, query[None], initial_xy=start, radius=self.search,
                             prior_sigma=self.search, patch_radius=self.patch, patch_step=max(1.0, self.step / 2))
            out[i] = m.xy[0] + origin
        return out
