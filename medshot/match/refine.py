"""Local refinement of a placement: block matching, a robust affine fit, then a smooth deformation.

Both steps run in the *target's* frame: the template image is resampled onto the target's grid
through the current placement and described again there, so a structure turned by 90 degrees is
compared with descriptors turned with it (descriptors are not rotation-invariant); what is left
to find is a small residual motion.

Written for any dimension; coordinates are array order (see :mod:`medshot.core.geometry`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.geometry import grid_coords, inside, l2_normalize, level_shape, resample_field, scale_matrix, warp_channels

# image (m, n[, p]) in [0, 1] -> (C, m, n[, p]) unit descriptors on the same grid
DescribeDense = Callable[[np.ndarray], np.ndarray]
# template positions (ndim, ...) -> the template described there (C, ...), and where its region lies (...)
TemplateAt = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class RefineOptions:
    """Knobs of the local refinement (sides are longest sides of the grids they run on)."""

    affine_side: int = 128
    affine_radius: int = 3  # block-matching search radius, pixels of the affine level
    affine_iterations: int = 3
    deform_side: int = 128
    deform_iterations: int = 5
    deform_radius: int = 2  # per iteration; iterations compound
    smoothing: float = 0.04  # Gaussian sigma of the displacement field, fraction of the level's side
    patch_size: int = 5


def block_match(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, radius: int,
                patch_size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per target pixel t, the shift d (|d_axis| <= radius) maximising patch similarity of warped(t) and target(t+d).

    Parameters
    ----------
    warped, target : ndarray (C, M, N[, P])
        Unit descriptors on the same grid.
    valid : ndarray (M, N[, P]) bool
        Where ``warped`` holds the template's region.
    radius : int
        Search radius per axis, pixels.
    patch_size : int
        Side of the (box) patch the similarity is averaged over.

    Returns
    -------
    d : ndarray (ndim, M, N[, P])
        Shifts in array order, sub-pixel.
    confidence : ndarray (M, N[, P])
        Margin of the best score over the best shift at least 2 pixels away along some axis (over
        the mean score when the radius allows no such shift), zero outside ``valid``: along an edge
        the displacement is ambiguous (aperture problem) and the runner-up scores almost as high,
        so such matches get about no weight.
    """
    shape = target.shape[1:]
    d = len(shape)
    side = 2 * radius + 1
    tp = np.pad(target, ((0, 0),) + ((radius, radius),) * d, mode="edge")
    shifts = np.array(list(itertools.product(range(-radius, radius + 1), repeat=d)), dtype=np.float64)
    scores = np.empty((len(shifts), *shape), np.float32)
    for i, shift in enumerate(shifts.astype(int)):
        window = (slice(None),) + tuple(slice(radius + o, radius + o + n) for o, n in zip(shift, shape))
        # einsum without path optimisation: the optimised path would copy the strided slice each time
        s = np.einsum("c...,c...->...", warped, tp[window])
        scores[i] = ndimage.uniform_filter(s, patch_size, mode="nearest")
    best = np.argmax(scores, axis=0)
    peak = np.take_along_axis(scores, best[None], 0)[0]
    far = np.zeros(scores.shape, bool)
    for axis in range(d):
        far |= np.abs(shifts[:, axis].reshape((-1,) + (1,) * d) - shifts[best, axis]) >= 2
    reference = np.where(far, scores, -np.inf).max(axis=0) if radius >= 2 else scores.mean(axis=0)
    conf = np.maximum(peak - reference, 0.0) * valid
    out = np.stack([shifts[best, axis] for axis in range(d)])
    index = np.unravel_index(best, (side,) * d)
    for axis in range(d):
        step = side ** (d - 1 - axis)
        b = index[axis]
        lo_ok, hi_ok = b > 0, b < side - 1
        s_lo = np.take_along_axis(scores, np.where(lo_ok, best - step, best)[None], 0)[0]
        s_hi = np.take_along_axis(scores, np.where(hi_ok, best + step, best)[None], 0)[0]
        denom = s_lo - 2 * peak + s_hi
        off = np.where((denom < -1e-9) & lo_ok & hi_ok, 0.5 * (s_lo - s_hi) / np.where(denom == 0, 1, denom), 0.0)
        out[axis] += np.clip(off, -0.5, 0.5)
    return out, conf


def fit_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, iterations: int = 5) -> np.ndarray:
    """Weighted least-squares affine ``src -> dst`` (``(N, ndim)`` points) with Huber-like reweighting."""
    d = src.shape[1]
    w = np.asarray(weights, dtype=np.float64).copy()
    A = np.hstack([src, np.ones((len(src), 1))])
    M = np.eye(d + 1)
    for _ in range(iterations):
        sw = np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(A * sw, dst * sw, rcond=None)
        M = np.vstack([sol.T, np.eye(d + 1)[d]])
        r = np.linalg.norm(A @ sol - dst, axis=1)
        scale = 1.4826 * np.median(r[w > 0]) + 1e-3 if np.any(w > 0) else 1.0
        w = weights * np.minimum(1.0, 2.0 * scale / np.maximum(r, 1e-9))
    return M


def plausible(matrix: np.ndarray, max_anisotropy: float = 3.0, scale_range=(0.25, 4.0)) -> bool:
    """Whether an affine's linear part is a believable anatomical change (no fold, no extreme shear)."""
    d = matrix.shape[0] - 1
    sv = np.linalg.svd(matrix[:d, :d], compute_uv=False)
    if np.linalg.det(matrix[:d, :d]) <= 0 or not np.all(np.isfinite(sv)):
        return False
    return sv[0] / sv[-1] <= max_anisotropy and scale_range[0] <= float(np.prod(sv) ** (1 / d)) <= scale_range[1]


class TargetLevel:
    """The target's descriptors on a grid of at most ``side`` pixels a side, with the scaling from its working grid.

    ``describe(shape)`` gives the target's descriptors on a grid of ``shape`` covering it, at that
    grid's own scale, the way the template is described when it is resampled onto that grid.
    """

    def __init__(self, work_shape: tuple[int, ...], side: int, describe: Callable[[tuple[int, ...]], np.ndarray]):
        shape, _ = level_shape(work_shape, side)
        self.shape = shape
        self.features = describe(shape)
        self.from_work = scale_matrix(np.array(shape, float) / np.array(work_shape, float))


class TemplateSampler:
    """How to see the template through a field ``(ndim, ...)`` of template positions.

    With ``describe``, the image is resampled and described again (orientation-correct for any
    turn); without it, its descriptors are resampled (cheap, for backbones too slow to run once per
    candidate). Called, it returns the descriptors ``(C, ...)`` and where the region lies ``(...)``.
    A class rather than a closure, so that a prepared template can be sent to worker processes.
    """

    def __init__(self, image: np.ndarray, roi: np.ndarray, features: np.ndarray, describe: DescribeDense | None):
        self.image, self.roi, self.features, self.describe = image, roi.astype(np.float32), features, describe

    def __call__(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = inside(coords, self.image.shape) & (
            ndimage.map_coordinates(self.roi, coords, order=1, mode="constant") > 0.5)
        if self.describe is None:
            return l2_normalize(warp_channels(self.features, coords), axis=0), valid
        image = ndimage.map_coordinates(self.image, coords, order=1, mode="nearest").astype(np.float32)
        return self.describe(image), valid


def refine_affine(template_at: TemplateAt, level: TargetLevel, matrix: np.ndarray,
                  options: RefineOptions) -> np.ndarray:
    """A placement (template working -> target working affine) refined by IRLS fits to block matches."""
    M_l = level.from_work @ matrix
    coords = grid_coords(np.linalg.inv(M_l), level.shape)
    feats, valid0 = template_at(coords)
    # Block matching only where the region can be (its box, plus the most the iterations can move it):
    # a small structure in a large field of view costs little.
    box = _box(valid0, options.affine_radius * options.affine_iterations + options.patch_size)
    if box is None:
        return matrix
    d = len(level.shape)
    origin = np.array([b.start for b in box], float)
    shift = np.eye(d + 1)
    shift[:d, d] = origin
    feats, valid0, target = feats[(slice(None), *box)], valid0[box], level.features[(slice(None), *box)]
    crop = valid0.shape
    D = np.eye(d + 1)  # residual motion on the level grid: warped(u) ~ target(D u)
    for _ in range(options.affine_iterations):
        source = grid_coords(np.linalg.inv(D) @ shift, crop)  # level positions the crop's pixels come from
        cw = source - origin.reshape((d,) + (1,) * d)
        warped = warp_channels(feats, cw)
        valid = ndimage.map_coordinates(valid0.astype(np.float32), cw, order=1, mode="constant") > 0.5
        shifts, conf = block_match(warped, target, valid, options.affine_radius, options.patch_size)
        sel = conf > 0
        if sel.sum() < 12:
            break
        at = np.argwhere(sel).astype(np.float64) + origin
        src = np.stack([c[sel] for c in source], 1)
        D_new = fit_affine(src, at + np.stack([c[sel] for c in shifts], 1), conf[sel])
        if not plausible(D_new):
            break
        D = D_new
    return np.linalg.inv(level.from_work) @ D @ M_l


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` pixels (clipped), or None when it is empty."""
    where = np.argwhere(mask)
    if len(where) == 0:
        return None
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def deform(template_at: TemplateAt, level: TargetLevel, matrix: np.ndarray, options: RefineOptions,
           work_shape: tuple[int, ...]) -> np.ndarray:
    """Backward field ``(ndim, *work_shape)``: for each target working pixel, its template working position.

    The template is resampled once through ``matrix`` and described on the level grid; repeated
    block matching then moves it, the displacement smoothed by a confidence-weighted Gaussian.
    """
    M_l = level.from_work @ matrix
    base = grid_coords(np.linalg.inv(M_l), level.shape)  # level pixel -> template working
    feats, valid0 = template_at(base)
    shape = level.shape
    identity = np.indices(shape, dtype=np.float64)
    pull = identity.copy()  # level pixel -> position on the warped grid
    sigma = options.smoothing * max(shape)
    for _ in range(options.deform_iterations):
        warped = warp_channels(feats, pull)
        valid = ndimage.map_coordinates(valid0.astype(np.float32), pull, order=1, mode="constant") > 0.5
        shifts, conf = block_match(warped, level.features, valid, options.deform_radius, options.patch_size)
        wsum = ndimage.gaussian_filter(conf, sigma) + 1e-6
        d_s = np.stack([ndimage.gaussian_filter(conf * s, sigma) / wsum for s in shifts])
        # composition: the new pull at t is the old pull at t - d(t)
        at = identity - d_s
        pull = np.stack([ndimage.map_coordinates(c, at, order=1, mode="nearest") for c in pull])
    level_field = np.stack([ndimage.map_coordinates(c, pull, order=1, mode="nearest") for c in base])
    return resample_field(level_field, work_shape)
