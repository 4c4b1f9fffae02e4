"""Reading volumes (NIfTI, DICOM series) and writing label maps back in the source geometry.

Every volume is returned as a :class:`Volume`: the voxel array reoriented to the closest canonical
(RAS+) orientation, which is what medshot matches on, plus the source file's affine, shape and
orientation so that results are written back in exactly the target's own geometry.

Conventions
-----------
* ``ijk`` are voxel indices of the **source** array (the file's own order; for a DICOM series
  ``i`` = column, ``j`` = row, ``k`` = slice in position order).
* ``xyz`` are world millimetres in the NIfTI RAS+ convention (+x towards the patient's right,
  +y anterior, +z superior). DICOM uses LPS+, so ``x_ras = -x_lps``, ``y_ras = -y_lps``,
  ``z_ras = z_lps``.
* The canonical array's axes point to R, A, S with increasing index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Relative tolerance on the spacing between consecutive DICOM slices; beyond it slices are missing.
SLICE_GAP_TOLERANCE = 0.05


@dataclass
class Volume:
    """A 3D image as medshot works on it.

    Attributes
    ----------
    array : ndarray, shape (X, Y, Z), float32
        Raw intensities (HU for CT) in canonical RAS+ orientation.
    affine : ndarray (4, 4)
        Canonical voxel -> world RAS mm.
    source_affine : ndarray (4, 4)
        Source voxel ``ijk`` -> world RAS mm (the file's own affine).
    source_shape : tuple of int
        Shape of the source array.
    ornt : ndarray (3, 2)
        nibabel orientation transform from the source axes to the canonical ones.
    path : Path or None
    kind : str
        ``"nifti"``, ``"dicom"`` or ``"array"``.
    meta : dict
        E.g. ``modality``, the NIfTI header's ``qform_code``/``sform_code``.
    """

    array: np.ndarray
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    ornt: np.ndarray
    path: Path | None = None
    kind: str = "array"
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Canonical voxel size (mm) along each canonical axis."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def stem(self) -> str:
        if self.path is None:
            return "volume"
        return volume_stem(self.path)

    # -- coordinates ------------------------------------------------------------------------

    def source_to_canonical(self, ijk: np.ndarray) -> np.ndarray:
        """Source voxel indices ``(N, 3)`` -> canonical voxel indices."""
        return _apply(np.linalg.inv(self.affine) @ self.source_affine, ijk)

    def canonical_to_source(self, ijk: np.ndarray) -> np.ndarray:
        return _apply(np.linalg.inv(self.source_affine) @ self.affine, ijk)

    def source_to_world(self, ijk: np.ndarray) -> np.ndarray:
        return _apply(self.source_affine, ijk)

    def world_to_source(self, xyz: np.ndarray) -> np.ndarray:
        return _apply(np.linalg.inv(self.source_affine), xyz)

    def to_source_array(self, canonical: np.ndarray) -> np.ndarray:
        """A canonical-orientation array (e.g. a label map) in the source array's axis order."""
        from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

        back = ornt_transform(axcodes2ornt("RAS"), self.ornt)
        out = apply_orientation(canonical, back)
        if out.shape != tuple(self.source_shape):
            raise AssertionError(f"reorientation gave {out.shape}, source is {self.source_shape}")
        return np.ascontiguousarray(out)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ matrix[:3, :3].T + matrix[:3, 3]


def volume_stem(path: str | Path) -> str:
    """File (or series folder) name without its image suffix."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def from_array(array: np.ndarray, affine: np.ndarray | None = None, path: Path | None = None, kind: str = "array",
               meta: dict | None = None) -> Volume:
    """Wrap a source-order array and its affine (default: 1 mm identity) as a canonical :class:`Volume`."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    data = np.asarray(array)
    if data.ndim != 3:
        raise MedshotError(f"expected a 3D volume, got array of shape {data.shape}", path)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise MedshotError("volume affine is singular or not finite", path)
    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt))
    canon_affine = affine @ inv_ornt_aff(ornt, data.shape)
    return Volume(canonical, canon_affine, affine, tuple(int(s) for s in data.shape), ornt, path, kind,
                  dict(meta or {}))


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------


def nifti_is_volume(path: str | Path) -> bool:
    """Whether a NIfTI file holds 3D data with more than one slice (reads the header only)."""
    import nibabel as nib

    try:
        full = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - an unreadable file is not a volume; the 2D reader will say why
        return False
    # (X, Y, Z) or (X, Y, Z, 1, ...) with Z > 1; a single-slice file stays 2D.
    return len(full) >= 3 and full[2] > 1 and all(s == 1 for s in full[3:])


def dicom_files(folder: Path) -> list[Path]:
    """Files of a folder that look like DICOM (``.dcm`` suffix or the ``DICM`` preamble)."""
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in (".dcm", ".dicom"):
            out.append(p)
            continue
        try:
            with open(p, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    out.append(p)
        except OSError:
            continue
    return out


def is_dicom_series_dir(path: str | Path) -> bool:
    """A folder of at least two DICOM slices that carry a position and an orientation (one volume)."""
    import pydicom

    path = Path(path)
    if not path.is_dir():
        return False
    files = dicom_files(path)
    if len(files) < 2:
        return False
    try:
        ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    except Exception:  # noqa: BLE001
        return False
    return hasattr(ds, "ImagePositionPatient") and hasattr(ds, "ImageOrientationPatient")


def is_volume_path(path: str | Path, slice_index: int | None = None) -> bool:
    """Input that medshot treats as a volume: a 3D NIfTI (without ``--slice``) or a DICOM series folder."""
    path = Path(path)
    if path.is_dir():
        return is_dicom_series_dir(path)
    return slice_index is None and path.is_file() and _is_nifti(path) and nifti_is_volume(path)


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def load_volume(path: str | Path) -> Volume:
    """Read a 3D NIfTI file or a DICOM series folder.

    Raises
    ------
    MedshotError
        Missing, unreadable, not 3D, an inconsistent DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise MedshotError("file not found", path)
    try:
        if path.is_dir():
            vol = load_dicom_series(path)
        elif _is_nifti(path):
            vol = _load_nifti(path)
        else:
            raise MedshotError("expected a NIfTI volume (.nii, .nii.gz) or a DICOM series folder", path)
    except MedshotError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader fails differently; name the file instead
        raise MedshotError(f"cannot read volume ({type(exc).__name__}: {exc})", path) from exc
    if min(vol.shape) < 2:
        raise MedshotError(f"expected a 3D volume, got shape {vol.source_shape}", path)
    from ..io import fill_missing

    vol.array = fill_missing(vol.array, vol.meta, path)
    return vol


def _load_nifti(path: Path) -> Volume:
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        shape = shape[:3]
    if len(shape) != 3:
        raise MedshotError(f"expected a 3D NIfTI volume, got shape {img.shape}", path)
    # float32 directly: get_fdata's default float64 would double the memory of a large CT.
    data = img.get_fdata(dtype=np.float32).reshape(shape)
    meta = {"qform_code": int(img.header["qform_code"]), "sform_code": int(img.header["sform_code"])}
    return from_array(data, img.affine, path, "nifti", meta)


def load_dicom_series(folder: str | Path) -> Volume:
    """Read a folder holding one DICOM series into a :class:`Volume`.

    Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
    the ImageOrientationPatient row and column directions), never by file name or InstanceNumber;
    RescaleSlope/RescaleIntercept are applied per slice.
    """
    import pydicom

    from ..io import dicom_pixels

    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        raise MedshotError("folder holds no DICOM file", folder)
    headers = []
    for f in files:
        try:
            headers.append((f, pydicom.dcmread(str(f), stop_before_pixels=True)))
        except Exception as exc:  # noqa: BLE001
            raise MedshotError(f"cannot read DICOM header ({type(exc).__name__}: {exc})", f) from exc
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise MedshotError(f"folder holds {len(series)} DICOM series; give one series per folder", folder)
    for f, ds in headers:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if not hasattr(ds, tag):
                raise MedshotError(f"DICOM slice lacks {tag}; cannot place it in a volume", f)
    iop = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: along a row (increasing column index)
    normal = np.cross(row_dir, col_dir)
    rows, cols = int(headers[0][1].Rows), int(headers[0][1].Columns)
    ps = [float(v) for v in headers[0][1].PixelSpacing]  # (between rows, between columns)
    for f, ds in headers[1:]:
        other = np.array([float(v) for v in ds.ImageOrientationPatient])
        if np.abs(other - iop).max() > 1e-3:
            raise MedshotError("slices have different ImageOrientationPatient; not one volume", f)
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise MedshotError(f"slice is {ds.Columns}x{ds.Rows} but the series is {cols}x{rows}", f)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    if len(files) > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-4):
            dup = headers[order[int(np.argmin(gaps)) + 1]][0]
            raise MedshotError("two slices share one position (duplicate slice?)", dup)
        step = float(np.median(gaps))
        if np.abs(gaps - step).max() > SLICE_GAP_TOLERANCE * step:
            raise MedshotError(f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm "
                               f"(missing slices?)", folder)
        slice_vec = (positions[order[-1]] - positions[order[0]]) / (len(files) - 1)
    else:
        thickness = float(getattr(headers[0][1], "SpacingBetweenSlices", 0) or
                          getattr(headers[0][1], "SliceThickness", 1) or 1)
        slice_vec = normal * thickness
    data = np.empty((cols, rows, len(files)), dtype=np.float32)
    for k, idx in enumerate(order):
        f = headers[idx][0]
        try:
            ds = pydicom.dcmread(str(f))
            pix = dicom_pixels(ds, f).astype(np.float32)
        except MedshotError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise MedshotError(f"cannot read DICOM pixels ({type(exc).__name__}: {exc})", f) from exc
        if pix.shape != (rows, cols):
            raise MedshotError(f"pixel data is {pix.shape}, expected {(rows, cols)}", f)
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        # Array index (i, j) = (column, row), as NIfTI converters write it.
        data[:, :, k] = (pix * slope + intercept).T
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps[1]
    lps[:3, 1] = col_dir * ps[0]
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[order[0]]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    meta = {"modality": str(getattr(headers[0][1], "Modality", "")),
            "files": [str(headers[i][0].name) for i in order]}
    return from_array(data, affine, folder, "dicom", meta)


def read_label_volume(path: str | Path, like: Volume) -> tuple[np.ndarray, dict[int, int]]:
    """Read a label map (0 = background) in the geometry of ``like``: canonical ``uint16`` labels.

    The map must cover the same voxels as ``like`` (same world geometry, whatever its own axis
    order). A binary 0/255 map is worked on as 0/1; the second value returned, ``{1: 255}`` then
    (``{}`` otherwise), lets outputs be written with the file's own values.
    """
    path = Path(path)
    vol = load_volume(path)
    if vol.shape != like.shape or not np.allclose(vol.affine, like.affine, atol=1e-2 * float(like.spacing.min())):
        raise MedshotError(f"label map geometry (shape {vol.source_shape}) differs from the image's (shape "
                           f"{like.source_shape}); it must share the image's voxel grid and affine", path)
    labels = vol.array
    if not np.allclose(labels, np.round(labels)):
        raise MedshotError("label map must hold integer labels", path)
    if labels.min() < 0:
        raise MedshotError("label map holds negative labels", path)
    if labels.max() > 65535:
        raise MedshotError(f"label {labels.max():g} is too large (labels go up to 65535)", path)
    # 16 bits per voxel, not 32: a CT-sized label map is then 150 MB rather than 300 MB.
    labels = np.round(labels).astype(np.uint16)
    values = np.unique(labels)
    if len(values) == 2 and values[0] == 0 and values[1] == 255:
        return (labels > 0).astype(np.uint16), {1: 255}
    return labels, {}


def load_label_volume(path: str | Path, like: Volume) -> np.ndarray:
    """:func:`read_label_volume`'s labels alone (binary 0/255 maps become 0/1)."""
    return read_label_volume(path, like)[0]


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def label_volume_bytes(canonical_labels: np.ndarray, like: Volume) -> bytes:
    """A canonical label map as ``.nii.gz`` bytes with exactly ``like``'s source affine, shape and orientation."""
    import nibabel as nib

    from ..outputs import label_dtype, nifti_gz_bytes

    labels = np.asarray(canonical_labels)
    dtype = label_dtype(labels)
    data = like.to_source_array(labels.astype(dtype, copy=False))
    img = nib.Nifti1Image(data, like.source_affine)
    # Keep the source's codes (scanner vs aligned space); a DICOM-derived target is scanner space.
    qcode = int(like.meta.get("qform_code", 1) or 1)
    scode = int(like.meta.get("sform_code", 1) or 1)
    img.set_qform(like.source_affine, code=qcode)
    img.set_sform(like.source_affine, code=scode)
    img.header.set_data_dtype(dtype)
    return nifti_gz_bytes(img)


def save_label_volume(path: Path, canonical_labels: np.ndarray, like: Volume) -> None:
    """Write :func:`label_volume_bytes` to ``path``."""
    Path(path).write_bytes(label_volume_bytes(canonical_labels, like))
