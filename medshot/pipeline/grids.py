"""Working grids: where template and target are matched, and how a volume is staged to bound memory.

A :class:`WorkGrid` covers an image (or a box of it) with its own pixels; working index ``w`` and
image index ``u`` are related per axis by ``w = (u - origin + 0.5) * factor - 0.5``.

* A 2D image is matched on its own pixels, its longest side brought into ``[min_side, max_side]``.
* A volume is matched on near-isotropic voxels of a common physical size, so different slice counts,
  spacings and fields of view meet on equal terms. When the annotations are small in the template's
  field of view, a coarse stage on the whole volumes places them and a fine stage works on boxes
  around them only (:class:`VolumeStages`); a target whose coarse grid would be too large is matched
  at a coarser spacing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..core.geometry import sample_grid, scale_matrix


@dataclass
class WorkGrid:
    """A working grid over ``box`` of an image (``origin``: the box's first index; ``factor``: work pixels
    per image pixel, per axis)."""

    shape: tuple[int, ...]
    origin: np.ndarray
    factor: np.ndarray

    @property
    def to_work(self) -> np.ndarray:
        """``(ndim + 1, ndim + 1)`` image index -> working index."""
        M = scale_matrix(self.factor)
        M[:-1, -1] -= self.factor * self.origin
        return M

    @property
    def from_work(self) -> np.ndarray:
        return np.linalg.inv(self.to_work)

    def resample(self, array: np.ndarray, transform=None) -> np.ndarray:
        """``array`` (on the image's grid) on this grid; ``transform`` is applied to the part read first."""
        return sample_grid(array, self.shape, self.factor, self.origin, transform)


def planar_grid(shape: tuple[int, ...], min_side: int, max_side: int) -> WorkGrid:
    """A 2D image's own pixels, its longest side clipped to ``[min_side, max_side]``."""
    side = int(np.clip(max(shape), min_side, max_side))
    f = side / max(shape)
    work = tuple(max(8, int(round(n * f))) for n in shape)
    return WorkGrid(work, np.zeros(len(shape)), np.array(work, float) / np.array(shape, float))


def spaced_grid(spacing: np.ndarray, work_spacing: float, lo: np.ndarray, hi: np.ndarray) -> WorkGrid:
    """A grid of ``work_spacing`` mm voxels covering the box ``[lo, hi)`` of a volume with voxel size ``spacing``.

    Every grid of one volume at one spacing is a part of one lattice (the whole volume's grid at that
    spacing), whatever its box: two boxes of the same volume sample it at the same points where they
    overlap, so a volume matched with itself, or with a copy shifted by whole working voxels, sees the
    same samples and finds the motion exactly.
    """
    f = np.asarray(spacing, float) / float(work_spacing)
    first = np.floor(np.asarray(lo, float) * f + 1e-6)
    last = np.ceil(np.asarray(hi, float) * f - 1e-6)
    work = tuple(int(max(4, b - a)) for a, b in zip(first, last))
    return WorkGrid(work, first / f, f)


@dataclass
class VolumeStages:
    """How a template volume is matched: spacings, and the fine stage's box (canonical voxels)."""

    coarse_spacing: float
    fine_spacing: float
    box: tuple[np.ndarray, np.ndarray]
    two_stage: bool

    @classmethod
    def plan(cls, spacing: np.ndarray, shape: tuple[int, ...], annotated: tuple[np.ndarray, np.ndarray],
             work_spacing: float | None = None, max_work_side: int = 80, fine_voxels: int = 72**3,
             margin_mm: float = 20.0) -> VolumeStages:
        """Spacings and stages for a template of voxel size ``spacing`` whose annotations span ``annotated``.

        The coarse spacing puts the template's field of view on ``max_work_side`` voxels; the fine stage
        covers the annotations plus 30 % (at least ``margin_mm``) with ``fine_voxels`` voxels, never finer
        than the template's own voxels. A second stage pays off only when it sees the region finer or
        much more tightly.
        """
        finest = float(np.min(spacing))
        extent = np.array(shape) * spacing
        coarse = max(finest, float(extent.max()) / max_work_side)
        lo, hi = annotated
        size_mm = (hi - lo + 1) * spacing
        margin = np.maximum(0.3 * size_mm, margin_mm) / spacing
        a = np.clip(np.floor(lo - margin), 0, np.array(shape) - 1).astype(int)
        b = np.clip(np.ceil(hi + margin) + 1, a + 2, np.array(shape)).astype(int)
        box_mm = (b - a) * spacing
        fine = float(work_spacing) if work_spacing else max(finest, float(np.prod(box_mm) / fine_voxels) ** (1 / 3))
        two = fine < 0.8 * coarse or float(np.prod(box_mm) / np.prod(extent)) < 0.4
        return cls(coarse if two else fine, fine, (a, b), two)


def capped_spacing(spacing: np.ndarray, shape: tuple[int, ...], work_spacing: float, max_voxels: int) -> float:
    """``work_spacing``, coarsened when a whole volume of ``shape`` would exceed ``max_voxels`` at it."""
    n = float(np.prod([max(4, round(s * sp / work_spacing)) for s, sp in zip(shape, spacing)]))
    return work_spacing if n <= max_voxels else work_spacing * (n / max_voxels) ** (1 / 3)


def mapped_box(matrix: np.ndarray, shape: tuple[int, ...], target_shape: tuple[int, ...], margin: float = 0.15,
               pad: np.ndarray | float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Index box ``[lo, hi)`` of a target covering a grid of ``shape`` mapped by ``matrix`` (grid -> target), grown."""
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape])))
    d = len(shape)
    mapped = corners @ matrix[:d, :d].T + matrix[:d, d]
    a, b = mapped.min(0), mapped.max(0)
    grow = margin * (b - a) + pad
    lo = np.clip(np.floor(a - grow), 0, np.array(target_shape) - 1).astype(int)
    hi = np.clip(np.ceil(b + grow) + 1, lo + 2, np.array(target_shape)).astype(int)
    return lo, hi
