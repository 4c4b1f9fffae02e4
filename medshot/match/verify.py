"""One verification criterion for every candidate correspondence, independent of the searches that made them.

A candidate (no motion, an intensity-based affine, a descriptor placement) is judged by pulling the
target back into the *template's* frame through it and comparing image edges there: normalised
gradient fields (NGF, Haber & Modersitzki 2006), the squared cosine of the angle between the two
images' smoothed gradients, weighted by how informative each template pixel is and averaged over
the template's region of interest. It looks at intensities only, not at the descriptors that drove
the pose search, it ignores contrast polarity and scale (so it holds across scanners and
modalities), and every candidate is scored on the same template pixels. Template pixels whose
partner falls outside the target's field of view count as missing: the score is multiplied by
the square root of the fraction that is present.

Written for any dimension; coordinates are array order (see :mod:`medshot.core.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.geometry import grid_coords, inside, level_shape, resize_image, scale_matrix


@dataclass
class Verification:
    """How well a candidate lines the target up with the template.

    Attributes
    ----------
    score : float
        ``agreement * present**0.5``, in [0, 1]: what candidates are ranked by.
    agreement : float
        Weighted mean NGF agreement over the present template pixels, in [0, 1].
    present : float
        Weighted fraction of the template's region whose partner lies in the target's field of view.
    """

    score: float
    agreement: float
    present: float


def edge_field(image: np.ndarray, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gradients ``(ndim, *shape)`` of the smoothed image and their squared norms ``(*shape)``."""
    g = np.stack(np.gradient(ndimage.gaussian_filter(np.asarray(image, np.float32), sigma, mode="nearest")))
    return g, (g * g).sum(0)


class Verifier:
    """Scores candidate affines (or fields) of one template against any target.

    Parameters
    ----------
    image : ndarray (m, n[, p])
        The template on its working grid, intensities in [0, 1].
    weight : ndarray (m, n[, p])
        Weight per template pixel (region of interest x informativeness), zero outside the region.
    side : int
        Longest side of the grid the comparison runs on.
    sigma : float
        Gradient smoothing, pixels of that grid.
    eps : float
        Edge-noise level of NGF, as a fraction of the template's median gradient magnitude in the region.
    """

    def __init__(self, image: np.ndarray, weight: np.ndarray, side: int = 128, sigma: float = 0.5,
                 eps: float = 1.0):
        self.work_shape = image.shape
        self.shape, _ = level_shape(image.shape, side)
        self.to_level = scale_matrix(np.array(self.shape, float) / np.array(image.shape, float))
        self.sigma = sigma
        self.weight = resize_image(weight, self.shape)
        # The template is brought to the comparison grid exactly as a target is at no motion (:func:`_pull`):
        # a target identical to the template then agrees best in place, not a slightly scaled copy of it.
        level = _pull(image, grid_coords(np.linalg.inv(self.to_level), self.shape))
        self.gradient, norm2 = edge_field(level, sigma)
        where = self.weight > 0
        typical = float(np.median(np.sqrt(norm2[where]))) if where.any() else 1.0
        self.eps2 = (eps * max(typical, 1e-4)) ** 2
        self.norm2 = norm2 + self.eps2

    def __call__(self, target: np.ndarray, matrix: np.ndarray) -> Verification:
        """Score the affine ``matrix`` (template working -> target working, array order) on ``target``."""
        coords = grid_coords(matrix @ np.linalg.inv(self.to_level), self.shape)
        return self.score_coords(target, coords)

    def score_coords(self, target: np.ndarray, coords: np.ndarray) -> Verification:
        """Score a field ``coords`` ``(ndim, *level shape)``: where each level pixel lies in ``target``."""
        present = inside(coords, target.shape)
        weight = self.weight * present
        total = float(self.weight.sum())
        if total <= 0 or weight.sum() <= 0:
            return Verification(0.0, 0.0, 0.0)
        g, n2 = edge_field(_pull(target, coords), self.sigma)
        eps2 = self.eps2
        agree = (g * self.gradient).sum(0) ** 2 / ((n2 + eps2) * self.norm2)
        agreement = float((agree * weight).sum() / weight.sum())
        fraction = float(weight.sum() / total)
        return Verification(agreement * np.sqrt(fraction), agreement, fraction)


def _pull(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``coords`` ``(ndim, *level shape)``, smoothed first at its own resolution at the
    scale of the sampling (the Jacobian's geometric-mean step, at least half a pixel)."""
    d = coords.shape[0]
    step = float(np.abs(np.linalg.det(_local_jacobian(coords))) ** (1.0 / d) or 1.0)
    return ndimage.map_coordinates(
        ndimage.gaussian_filter(np.asarray(image, np.float32), max(0.5, 0.5 * step), mode="nearest"),
        coords, order=1, mode="nearest")


def _local_jacobian(coords: np.ndarray) -> np.ndarray:
    """Median Jacobian of a field ``(ndim, ...)``: target pixels per template-level pixel."""
    d = coords.shape[0]
    J = np.empty((d, d))
    for i in range(d):
        grads = np.gradient(coords[i])
        for j in range(d):
            J[i, j] = float(np.median(grads[j]))
    return J
