"""The one image type: an array and its geometry, for 2D images and 3D volumes alike.

As TorchIO's ``Image`` does, an :class:`Image` carries its data with a 4x4 affine. A 2D image is
one slice: its affine maps the array index ``(row, col)`` (as ``(row, col, 0)``) to the world.

Conventions
-----------
* Points are array indices in the order of ``image.array``'s axes: ``(row, col)`` in 2D,
  ``(i, j, k)`` of the canonical array in 3D; the centre of the first pixel is 0.
* World coordinates are millimetres in the NIfTI RAS+ convention (+x towards the patient's right,
  +y anterior, +z superior); DICOM's LPS+ has x and y negated.
* Volumes are reoriented on reading to the closest canonical (RAS+) orientation, which is what
  medshot matches on; ``source`` remembers the file's own geometry, so results are written back in
  exactly the target's geometry. 2D images are kept as stored.
* A raster image (PNG, JPEG, TIFF) has no geometry of its own: it is placed as ITK and 3D Slicer
  place it, 1 mm pixels, origin 0, LPS = (col, row, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError

_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Source:
    """How a file stores an image, to write results back in its geometry.

    Attributes
    ----------
    affine : ndarray (4, 4)
        Source array index -> world RAS mm (the file's own affine).
    shape : tuple of int
        Shape of the source array (for a slice of a 3D NIfTI: the whole data array).
    ornt : ndarray (ndim, 2) or None
        nibabel orientation transform from the source axes to the canonical ones (volumes).
    slice_axis, slice_index : int or None
        Which slice of a 3D NIfTI a 2D image is.
    """

    affine: np.ndarray
    shape: tuple[int, ...]
    ornt: np.ndarray | None = None
    slice_axis: int | None = None
    slice_index: int | None = None


@dataclass
class Image:
    """A 2D image or a 3D volume as medshot works on it.

    Attributes
    ----------
    array : ndarray (M, N) or (M, N, P), float32
        Raw intensities (Hounsfield units for CT); volumes in canonical RAS+ axis order.
    affine : ndarray (4, 4)
        Array index -> world RAS mm (2D: index ``(row, col, 0)``).
    path : Path or None
        Where it came from.
    kind : str
        ``"raster"``, ``"nifti"``, ``"dicom"`` (a file or a series folder) or ``"array"``.
    source : Source or None
        The file's own geometry (None: the array is the source).
    meta : dict
        E.g. ``modality``, ``mode``, the NIfTI header's ``qform_code``/``sform_code``.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Path | None = None
    kind: str = "array"
    source: Source | None = None
    meta: dict = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return int(self.array.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Pixel size (mm) along each array axis."""
        return np.sqrt((self.affine[:3, : self.ndim] ** 2).sum(axis=0))

    @property
    def stem(self) -> str:
        return "image" if self.path is None else path_stem(self.path)

    def index_to_world(self, points: np.ndarray) -> np.ndarray:
        """Array indices ``(N, ndim)`` -> world RAS mm ``(N, 3)``."""
        p = np.asarray(points, np.float64).reshape(-1, self.ndim)
        return p @ self.affine[:3, : self.ndim].T + self.affine[:3, 3]

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """World RAS mm ``(N, 3)`` -> array indices ``(N, ndim)`` (for 2D: projected on the image's plane)."""
        p = np.asarray(xyz, np.float64).reshape(-1, 3) - self.affine[:3, 3]
        A = self.affine[:3, : self.ndim]
        return np.linalg.lstsq(A, p.T, rcond=None)[0].T

    def to_source_array(self, labels: np.ndarray) -> np.ndarray:
        """An array on this image's grid (e.g. a label map) in the source file's axis order."""
        if self.source is None or self.source.ornt is None:
            return np.asarray(labels)
        from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

        back = ornt_transform(axcodes2ornt("RAS"), self.source.ornt)
        return np.ascontiguousarray(apply_orientation(labels, back))

    def source_to_index(self, points: np.ndarray) -> np.ndarray:
        """Source array indices (the file's own axis order) ``(N, ndim)`` -> this image's indices."""
        if self.source is None or self.source.ornt is None:
            return np.asarray(points, np.float64).reshape(-1, self.ndim)
        return _apply(np.linalg.inv(self.affine) @ self.source.affine, points)

    def index_to_source(self, points: np.ndarray) -> np.ndarray:
        if self.source is None or self.source.ornt is None:
            return np.asarray(points, np.float64).reshape(-1, self.ndim)
        return _apply(np.linalg.inv(self.source.affine) @ self.affine, points)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ matrix[:3, :3].T + matrix[:3, 3]


def path_stem(path: str | Path) -> str:
    """File (or series folder) name without its image suffix (``scan.nii.gz`` -> ``scan``)."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def raster_affine() -> np.ndarray:
    """Index ``(row, col)`` -> RAS for an image without geometry: LPS = (col, row, 0), 1 mm pixels."""
    lps = np.zeros((4, 4))
    lps[0, 1] = 1.0  # x along columns
    lps[1, 0] = 1.0  # y along rows
    lps[2, 2] = 1.0  # the (unused) third index along z
    lps[3, 3] = 1.0
    return RAS_FROM_LPS @ lps


def from_array(array: np.ndarray, affine: np.ndarray | None = None, path: Path | None = None, kind: str = "array",
               meta: dict | None = None) -> Image:
    """An :class:`Image` from an array and its affine (source index -> RAS mm).

    A 3D array is reoriented to canonical RAS+ (``source`` keeps the given geometry); a 2D array is
    kept as it is (default geometry: :func:`raster_affine`).
    """
    data = np.asarray(array, np.float32)
    if data.ndim == 2:
        return Image(np.ascontiguousarray(data), raster_affine() if affine is None else np.asarray(affine, float),
                     path, kind, None, dict(meta or {}))
    if data.ndim != 3:
        raise MedshotError(f"expected a 2D image or a 3D volume, got array of shape {data.shape}", path)
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise MedshotError("volume affine is singular or not finite", path)
    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt))
    return Image(canonical, affine @ inv_ornt_aff(ornt, data.shape), path, kind,
                 Source(affine, tuple(int(s) for s in data.shape), ornt), dict(meta or {}))
