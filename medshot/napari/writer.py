"""The napari writers: label maps and landmarks from napari layers, in medshot's formats.

* Labels -> ``.png``/``.tif`` (8-bit, 16-bit past 255) or ``.nii``/``.nii.gz``. A layer made by
  medshot's reader or panels is written in its image's own geometry, as ``medshot segment``
  writes masks: a 2D NIfTI with the image's affine (a slice back into its volume's shape), a
  volume in the file's own axis order and affine. Any other layer is written as it is.
* Points -> ``.csv`` that ``medshot template --landmarks`` reads (2D ``name,x,y`` pixels; volumes
  ``name,i,j,k,x_mm,y_mm,z_mm``) or a 3D Slicer ``.mrk.json`` (LPS mm). Names come from the
  layer's ``name`` feature.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedshotError
from .layers import KEY, Frame, frame_of

NIFTI = (".nii", ".nii.gz")


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """napari's labels writer hook; returns the written path."""
    from ..data.write import write_bytes_atomic

    out = Path(path)
    frame = frame_of(attributes)
    values = ((attributes.get("metadata") or {}).get(KEY) or {}).get("label_values")
    labels = np.asarray(data)
    if np.any(labels < 0):
        raise MedshotError("label map holds negative labels", out)
    if frame is not None:
        blob = label_bytes_in_frame(frame, frame.from_display(labels), out, values)
    else:
        blob = _plain_label_bytes(labels, out, attributes)
    write_bytes_atomic(out, blob)
    return [str(out)]


def label_bytes_in_frame(frame: Frame, labels: np.ndarray, out: Path, values: dict | None = None) -> bytes:
    """A label map on the image's grid (2D ``(H, W)``; volume canonical) as file bytes for ``out``'s suffix.

    ``values`` maps internal labels to the values the template's mask file used (``{1: 255}``).
    """
    from ..data.write import file_label_values, label_map_bytes

    labels = file_label_values(labels, values)
    name = out.name.lower()
    image = frame.source
    if frame.is_volume and not name.endswith(NIFTI):
        raise MedshotError("a volume's label map is written as .nii or .nii.gz", out)
    if not name.endswith(NIFTI):
        return _raster_bytes(labels, out)
    if image.kind in ("nifti", "dicom") and (image.ndim == 3 or image.source is not None):
        return label_map_bytes(labels, image)  # the file's own geometry (a volume's source axis order)
    # Anything else (a raster or DICOM file written as NIfTI): the image's affine, index (row, col[, k]) -> RAS.
    return _nifti_bytes(labels, image.affine)


def _plain_label_bytes(labels: np.ndarray, out: Path, attributes: dict) -> bytes:
    if out.name.lower().endswith(NIFTI):
        scale = np.asarray(attributes.get("scale") or [1.0] * labels.ndim, float)
        translate = np.asarray(attributes.get("translate") or [0.0] * labels.ndim, float)
        affine = np.eye(4)
        affine[: labels.ndim, : labels.ndim] = np.diag(scale)
        affine[: labels.ndim, 3] = translate
        return _nifti_bytes(labels, affine)
    if labels.ndim != 2:
        raise MedshotError(f"a {labels.ndim}D label map is written as .nii or .nii.gz", out)
    return _raster_bytes(labels, out)


def _raster_bytes(labels: np.ndarray, out: Path) -> bytes:
    from PIL import Image

    from ..data.write import label_dtype, png_bytes

    name = out.name.lower()
    if labels.ndim != 2:
        raise MedshotError(f"a {labels.ndim}D label map is written as .nii or .nii.gz", out)
    if labels.max(initial=0) > 65535:
        raise MedshotError(f"label {labels.max()} is too large (labels go up to 65535)", out)
    if name.endswith(".png"):
        return png_bytes(labels.astype(label_dtype(labels)))
    if name.endswith((".tif", ".tiff")):
        buf = io.BytesIO()
        Image.fromarray(labels.astype(label_dtype(labels))).save(buf, format="TIFF")
        return buf.getvalue()
    raise MedshotError("label maps are written as .png, .tif, .nii or .nii.gz", out)


def _nifti_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    from ..data.write import label_dtype, nifti_gz_bytes

    dtype = label_dtype(labels)
    img = nib.Nifti1Image(labels.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return nifti_gz_bytes(img)


# ------------------------------------------------------------------------------------------------
# Landmarks
# ------------------------------------------------------------------------------------------------


def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    """napari's points writer hook (``.csv`` or ``.mrk.json``); returns the written path."""
    out = Path(path)
    frame = frame_of(attributes)
    names = point_names(attributes.get("features"), len(data))
    write_landmarks(out, frame, names, np.asarray(data, float), attributes)
    return [str(out)]


def point_names(features, n: int) -> list[str]:
    """Names from a layer's ``name`` feature; unnamed points become ``P-1``, ``P-2``, ..."""
    names = []
    column = None if features is None or "name" not in features else list(features["name"])
    for i in range(n):
        value = column[i] if column is not None and i < len(column) else None
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
        names.append(text or f"P-{i + 1}")
    return names


def write_landmarks(out: Path, frame: Frame | None, names: list[str], data: np.ndarray,
                    attributes: dict | None = None) -> Path:
    """Points in napari data coordinates as a landmark ``.csv`` or ``.mrk.json`` (see the module docstring)."""
    from ..data.markups import FLIP, write_markups
    from ..data.write import write_csv_atomic

    name = out.name.lower()
    data = np.asarray(data, float).reshape(len(names), -1)
    if frame is None:
        lps = _world_lps(data, attributes or {})
        ras = lps * FLIP
    else:
        ras = frame.ras(data)
    if name.endswith(".mrk.json"):
        return write_markups(out, names, ras)
    if not name.endswith(".csv"):
        raise MedshotError("landmarks are written as .csv or .mrk.json", out)
    if frame is None:
        write_csv_atomic(out, ["name", "x_lps", "y_lps", "z_lps"], [[n, *np.round(p, 4)] for n, p in zip(names, lps)])
    elif frame.is_volume:
        ijk = frame.source.index_to_source(frame.points_from_display(data))  # the file's own voxel indices
        write_csv_atomic(out, ["name", "i", "j", "k", "x_mm", "y_mm", "z_mm"],
                  [[n, *np.round(v, 3), *np.round(w, 3)] for n, v, w in zip(names, ijk, ras)])
    else:
        rc = frame.points_from_display(data)
        write_csv_atomic(out, ["name", "x", "y"],
                  [[n, round(float(col), 3), round(float(row), 3)] for n, (row, col) in zip(names, rc)])
    return out


def _world_lps(data: np.ndarray, attributes: dict) -> np.ndarray:
    """A layer without a medshot frame: its world coordinates taken as LPS mm (napari ``(z, y, x)`` order)."""
    ndim = data.shape[1]
    scale = np.asarray(attributes.get("scale") or [1.0] * ndim, float)
    translate = np.asarray(attributes.get("translate") or [0.0] * ndim, float)
    world = data * scale + translate
    zyx = np.column_stack([np.zeros(len(world)), world]) if ndim == 2 else world[:, -3:]
    return zyx[:, ::-1]
