"""Carrying the template's annotations through a correspondence onto a target's own pixels (any dimension).

A correspondence lives on two working grids; what the user gets lives on the images' grids:

    target index -> target working -> (backward field) template working -> template index

Label maps are carried only in the box of the target where the template's labels can land, on a
grid of at most ``max_voxels`` (so a large CT never needs full-resolution fields), as per-label
probabilities brought to the target's voxels a slab at a time with a running argmax: memory grows
neither with the number of labels nor with the box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import apply_affine
from ..match.correspond import Correspondence
from .grids import WorkGrid, mapped_box


def backward_at(corr: Correspondence, points: np.ndarray) -> np.ndarray:
    """Template working positions ``(ndim, ...)`` of target working positions ``points`` ``(ndim, ...)``.

    Inside the field's grid the field is interpolated; outside it the chosen affine holds.
    """
    d = points.shape[0]
    flat = points.reshape(d, -1)
    out = apply_affine(np.linalg.inv(corr.matrix), flat.T).T
    hi = np.array(corr.backward.shape[1:], float) - 1
    inside = np.all((flat >= 0) & (flat <= hi[:, None]), axis=0)
    if inside.any():
        out[:, inside] = np.stack([ndimage.map_coordinates(c, flat[:, inside], order=1, mode="nearest")
                                   for c in corr.backward])
    return out.reshape(points.shape)


def carry_points(corr: Correspondence, template: WorkGrid, target: WorkGrid, points: np.ndarray) -> np.ndarray:
    """Template image indices ``(N, ndim)`` -> target image indices through the correspondence."""
    at_work = corr.forward(apply_affine(template.to_work, points))
    return apply_affine(target.from_work, at_work)


def carry_labels(mask: np.ndarray, labels: list[int], corr: Correspondence, template: WorkGrid,
                 target: WorkGrid, target_shape: tuple[int, ...], max_voxels: int | None = None,
                 dtype=np.uint16) -> np.ndarray:
    """The template's label map (its image grid) on the target image's grid.

    Parameters
    ----------
    mask : ndarray
        Template label map on the template image's grid.
    labels : list of int
        The labels to carry (0 is background).
    corr : Correspondence
        From ``template``'s working grid to ``target``'s.
    max_voxels : int, optional
        Cap on the grid the labels are carried on at once (None: the target's own pixels).
    """
    d = len(target_shape)
    out = np.zeros(target_shape, dtype)
    present = [lab for lab in labels if np.any(mask == lab)]
    if not present:
        return out
    # Where the labels can land: the box of the template's labels, mapped, grown (the deformation moves them).
    where = np.argwhere(np.isin(mask, present))
    lo_t, hi_t = where.min(0), where.max(0) + 1
    to_target = target.from_work @ corr.matrix @ template.to_work
    box_grid = np.eye(d + 1)
    box_grid[:d, d] = lo_t
    lo, hi = mapped_box(to_target @ box_grid, tuple(hi_t - lo_t), target_shape, margin=0.25, pad=4.0)
    size = hi - lo
    scale = 1.0 if max_voxels is None else min(1.0, (max_voxels / float(np.prod(size))) ** (1 / d))
    shape = tuple(max(2, int(round(n * scale))) for n in size)
    factor = np.array(shape, float) / size
    axes = [lo[a] + (np.arange(shape[a]) + 0.5) / factor[a] - 0.5 for a in range(d)]
    index = np.stack(np.meshgrid(*axes, indexing="ij"))  # target image indices of the carrying grid
    at_template = apply_affine(template.from_work, backward_at(
        corr, apply_affine(target.to_work, index.reshape(d, -1).T).T.reshape(index.shape)).reshape(d, -1).T)
    at_template = at_template.T.reshape(index.shape)
    probs = np.stack([_carry_label(mask, lab, at_template) for lab in present])
    del at_template, index
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    crop = out[box]
    # Back to the target's own pixels a slab at a time (along the first axis), with a running argmax.
    up = [np.clip((np.arange(n) + 0.5) / f - 0.5, 0, m - 1) for n, f, m in zip(size, factor, shape)]
    step = max(1, int(2**22 // max(1, np.prod(size[1:]))))
    for a0 in range(0, int(size[0]), step):
        axes = [up[0][a0:a0 + step], *up[1:]]
        best_p = np.full([len(axes[0]), *size[1:]], 0.5, np.float32)  # a pixel needs more than 0.5 to get a label
        best_i = np.full(best_p.shape, -1, np.int32)
        for i, p in enumerate(probs):
            q = sample_axes(p, axes)
            better = q > best_p
            best_p[better] = q[better]
            best_i[better] = i
        for i, lab in enumerate(present):
            crop[a0:a0 + step][best_i == i] = lab
    return out


def _carry_label(mask: np.ndarray, label: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of one label's indicator at template indices ``coords`` ``(ndim, ...)``.

    Only the label's bounding box (plus one pixel) is converted to float, so a large template's
    label map is never copied whole.
    """
    idx = np.argwhere(mask == label)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, mask.shape)
    sub = (mask[tuple(slice(a, b) for a, b in zip(lo, hi))] == label).astype(np.float32)
    shifted = coords - lo.reshape((-1,) + (1,) * (coords.ndim - 1))
    return ndimage.map_coordinates(sub, shifted, order=1, mode="constant", cval=0.0)


def sample_axes(array: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """``array`` linearly interpolated on the axis-aligned grid of positions ``axes`` (one per axis), separably."""
    out = array
    for axis, coords in enumerate(axes):
        lo = np.minimum(np.floor(coords).astype(np.intp), max(array.shape[axis] - 2, 0))
        hi = np.minimum(lo + 1, array.shape[axis] - 1)
        w = (coords - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(array.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out


def points_where(points: np.ndarray, region: np.ndarray, inside: bool) -> np.ndarray:
    """The points (array indices) that lie inside (or outside) ``region``."""
    if len(points) == 0:
        return points
    idx = np.clip(np.round(points).astype(int), 0, np.array(region.shape) - 1)
    within = np.all((points >= 0) & (points <= np.array(region.shape) - 1), axis=1)
    return points[within & (region[tuple(idx.T)] == inside)]
