"""Carrying the template's annotations through a correspondence onto a target's own pixels (any dimension).

A correspondence lives on two working grids; what the user gets lives on the images' grids:

    target index -> target working -> (backward field) template working -> template index

Label maps are carried only in the box of the target where the template's labels can land, at the
target's own resolution, a slab of at most ``max_voxels`` voxels at a time with a running argmax
over the labels' interpolated indicators: memory grows neither with the number of labels nor with
the box, and thin structures on thick slices keep their shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import apply_affine, grid_coords
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
    """The template's label map (its image grid) on the target image's grid, at the target's own resolution.

    Parameters
    ----------
    mask : ndarray
        Template label map on the template image's grid.
    labels : list of int
        The labels to carry (0 is background).
    corr : Correspondence
        From ``template``'s working grid to ``target``'s.
    max_voxels : int, optional
        Target voxels carried at once (a slab along the first axis; default 2**22): bounds memory
        without coarsening the result, which thin labels on thick slices would not survive.

    Returns
    -------
    ndarray of ``target_shape``
        Each voxel gets the label whose linearly interpolated indicator is largest there, if above 0.5.
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
    indicators = [_indicator(mask, lab) for lab in present]
    step = max(1, int((max_voxels or 2**22) // max(1, np.prod(hi[1:] - lo[1:]))))
    for a0 in range(int(lo[0]), int(hi[0]), step):
        axes = [np.arange(a0, min(a0 + step, int(hi[0])))] + [np.arange(a, b) for a, b in zip(lo[1:], hi[1:])]
        index = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(d, -1).astype(np.float64)
        at_template = apply_affine(template.from_work, backward_at(
            corr, apply_affine(target.to_work, index.T).T).T).T
        best_p = np.full(index.shape[1], 0.5, np.float32)  # a voxel needs more than 0.5 to get a label
        best_i = np.full(index.shape[1], -1, np.int32)
        for i, (sub, sub_lo) in enumerate(indicators):
            coords = at_template - sub_lo[:, None]
            near = np.all((coords > -1) & (coords < np.array(sub.shape)[:, None]), axis=0)
            if not near.any():
                continue
            q = np.zeros(index.shape[1], np.float32)
            q[near] = ndimage.map_coordinates(sub, coords[:, near], order=1, mode="grid-constant", cval=0.0)
            better = q > best_p
            best_p[better] = q[better]
            best_i[better] = i
        slab = np.zeros(best_i.shape, dtype)
        for i, lab in enumerate(present):
            slab[best_i == i] = lab
        out[tuple(slice(int(ax[0]), int(ax[-1]) + 1) for ax in axes)] = slab.reshape([len(ax) for ax in axes])
    return out


def _indicator(mask: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    """One label's indicator (float32) on its bounding box plus one pixel, and the box's first index.

    Only that box is converted to float, so a large template's label map is never copied whole.
    """
    idx = np.argwhere(mask == label)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, mask.shape)
    return (mask[tuple(slice(a, b) for a, b in zip(lo, hi))] == label).astype(np.float32), lo.astype(float)


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


def labels_on_grid(label_map: np.ndarray, labels: list[int], grid: WorkGrid) -> dict[int, np.ndarray]:
    """Each label's region on a working grid (bool, the grid's shape), from a label map on the image's grid.

    A working pixel takes the label nearest its centre. A label too small to own a working pixel that
    way (a thin or tiny structure on a coarse grid) gets the working pixels its own pixels fall in, so
    every label present in ``label_map`` has a region, and evidence, on the grid.
    """
    nearest = ndimage.map_coordinates(label_map, grid_coords(grid.from_work, grid.shape), order=0, mode="nearest")
    shape = np.array(grid.shape)
    out = {}
    for label in labels:
        region = nearest == label
        if not region.any():
            at = np.round(apply_affine(grid.to_work, np.argwhere(label_map == label))).astype(int)
            at = at[np.all((at >= 0) & (at < shape), axis=1)]
            region[tuple(at.T)] = True
        out[label] = region
    return out
