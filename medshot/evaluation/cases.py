"""The data classes of an evaluation dataset: a listed entry, a checked case, the dataset.

Coordinates of a case follow its image's array: ``shape`` and ``spacing`` are per array axis
(2D ``(rows, columns)``; 3D ``(i, j, k)`` of the file's own voxel array), spacing in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Entry:
    """A case as listed by a folder layout or a manifest, before its files are read and checked.

    ``landmarks`` is a CSV path, a list of dicts from a JSON manifest (``name`` plus ``x, y`` in
    2D, ``i, j, k`` or ``x_mm, y_mm, z_mm`` in 3D), or None. ``spacing`` (mm per array axis)
    overrides the header's.
    """

    image: Path
    mask: Path | None = None
    landmarks: Path | list[dict] | None = None
    name: str | None = None
    spacing: tuple[float, ...] | None = None
    where: Path | None = None  # the manifest that listed it (for error messages)


@dataclass
class Case:
    """One annotated image or volume of a dataset.

    Attributes
    ----------
    name : str
        Unique case id (the image file name without its suffix, unless a manifest names it).
    image : Path
        A 2D image, a 3D NIfTI file or a DICOM series folder.
    mask : Path or None
        Label map on the image's grid (0 = background).
    landmarks : list
        Ground-truth points, :class:`medshot.data.annotations.Landmark`, in the file's own array
        indices: ``(row, col)`` pixels for images, source voxels ``(i, j, k)`` for volumes.
    spacing : tuple of float or None
        Element size in mm per array axis, when known (header or manifest); HD95 and distances
        are then also reported in mm.
    shape : tuple of int
        The image array's shape: ``(H, W)`` or ``(I, J, K)``.
    labels : tuple of int
        Labels present in the mask.
    affine : ndarray, shape (4, 4), or None
        Volumes: source voxel ``(i, j, k)`` -> world RAS mm (to write predictions in the target's
        geometry). None for images.
    """

    name: str
    image: Path
    mask: Path | None = None
    landmarks: list = field(default_factory=list)
    spacing: tuple[float, ...] | None = None
    shape: tuple[int, ...] = (0, 0)
    labels: tuple[int, ...] = ()
    affine: np.ndarray | None = field(default=None, repr=False)

    @property
    def ndim(self) -> int:
        """2 for an image, 3 for a volume."""
        return len(self.shape)

    @property
    def spacing_yx(self) -> tuple[float, ...] | None:
        """The 2D name of :attr:`spacing` (row spacing, column spacing)."""
        return self.spacing


@dataclass
class Dataset:
    """The cases of one task, sorted by name, and the names of its labels.

    ``kind`` is ``"2d"`` (images) or ``"3d"`` (volumes); every case of a dataset has the same kind.
    """

    root: Path
    cases: list[Case]
    label_names: dict[int, str] = field(default_factory=dict)
    kind: str = "2d"

    @property
    def has_masks(self) -> bool:
        """Whether the cases have label maps (then every case has one)."""
        return any(c.mask is not None for c in self.cases)

    @property
    def has_landmarks(self) -> bool:
        """Whether the cases have landmarks (then every case has some)."""
        return any(c.landmarks for c in self.cases)

    @property
    def names(self) -> list[str]:
        """Case names, sorted."""
        return [c.name for c in self.cases]

    def case(self, name: str) -> Case:
        """The case of that name."""
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {c.name: c for c in self.cases}
