"""One DICOM file's pixels as medshot reads them: frames, their geometry, and colour to luminance.

A DICOM file holds one image or several frames. Frames are read as what they are:

* **slices of a volume** when each frame has a position in the patient (Enhanced/legacy-converted
  multi-frame objects: ``PerFrameFunctionalGroupsSequence`` plane positions; RT Dose: the image
  position plus ``GridFrameOffsetVector``; NM tomography: ``SliceVector`` with
  ``SpacingBetweenSlices``) and these positions are evenly spaced along the slice normal: the
  file is a volume, with the affine of those positions;
* otherwise **frames of one plane** (a cine or ultrasound loop, a secondary capture with several
  frames): one frame is used, the first unless another is asked for, and the image's
  ``meta["frame_note"]`` says which and why, for the command line to print.

Colour is reduced to luminance with the weights medshot uses for colour PNGs (ITU-R BT.601:
0.299 R + 0.587 G + 0.114 B): RGB, YBR_FULL and YBR_FULL_422 (which pydicom >= 3 returns as RGB)
and PALETTE COLOR (through its lookup table). MONOCHROME1 (white is the lowest value) is turned
into MONOCHROME2 so that a bone is bright in every X-ray, whatever its photometric interpretation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .image import RAS_FROM_LPS, Image, from_array, raster_affine

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Relative tolerance on the spacing between consecutive frames of a volume (as for a series folder).
FRAME_GAP_TOLERANCE = 0.05
# Frame Increment Pointer targets that make frames a time series (Frame Time, Frame Time Vector,
# Cardiac Trigger Time (Vector), Actual Frame Duration, Time Slot Vector).
_TIME_POINTERS = {0x00181063, 0x00181065, 0x00181060, 0x00181086, 0x00181242, 0x00540070}
_SLICE_VECTOR = 0x00540080


def n_frames(ds, path: str | Path | None = None) -> int:
    """Number of frames (``NumberOfFrames``, 1 when absent); a malformed value is a one-line error."""
    value = getattr(ds, "NumberOfFrames", None)
    try:
        return max(1, int(value)) if value not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise MedshotError(f"NumberOfFrames is '{value}', not a number", path) from exc


def _group_item(ds, k: int, sequence: str):
    """The first item of a functional-group ``sequence`` for frame ``k``: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", k), ("SharedFunctionalGroupsSequence", 0)):
        seq = getattr(ds, groups, None)
        if seq is not None and len(seq) > index and sequence in seq[index]:
            inner = seq[index][sequence].value
            if len(inner):
                return inner[0]
    return None


def _floats(value) -> np.ndarray | None:
    return None if value is None else np.array([float(v) for v in value], np.float64)


def plane_geometry(ds, k: int = 0) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Frame ``k``'s position (LPS mm, ``(3,)``), orientation (``(6,)``: row then column direction cosines)
    and pixel spacing (``(2,)`` mm: between rows, between columns); None where the file does not say."""
    pos = _group_item(ds, k, "PlanePositionSequence")
    ori = _group_item(ds, k, "PlaneOrientationSequence")
    meas = _group_item(ds, k, "PixelMeasuresSequence")
    detector = getattr(ds, "DetectorInformationSequence", None)  # NM keeps its plane per detector
    det = detector[0] if detector is not None and len(detector) else None

    def first(tag: str, *sources):
        for s in sources:
            if s is not None and tag in s:
                return _floats(s[tag].value)
        return None

    position = first("ImagePositionPatient", pos, ds, det)
    orientation = first("ImageOrientationPatient", ori, ds, det)
    spacing = first("PixelSpacing", meas, ds)
    if position is not None and position.shape != (3,):
        position = None
    if orientation is not None and orientation.shape != (6,):
        orientation = None
    if spacing is not None and (spacing.shape != (2,) or not np.all(spacing > 0)):
        spacing = None
    return position, orientation, spacing


def frame_positions(ds, count: int) -> np.ndarray | None:
    """``(count, 3)`` LPS positions of the frames when the file places each of them, else None."""
    if count < 2:
        return None
    if "PerFrameFunctionalGroupsSequence" in ds:
        got = [plane_geometry(ds, k)[0] for k in range(count)]
        return None if any(p is None for p in got) else np.stack(got)
    position, orientation, _ = plane_geometry(ds)
    if position is None or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    offsets = _floats(getattr(ds, "GridFrameOffsetVector", None))  # RT Dose
    if offsets is not None and len(offsets) == count:
        # Offsets relative to the first frame when they start at 0, else absolute along the normal.
        rel = offsets if offsets[0] == 0 else offsets - float(position @ normal)
        return position + rel[:, None] * normal
    pointers = _pointers(ds)
    step = getattr(ds, "SpacingBetweenSlices", None)
    if _SLICE_VECTOR in pointers and step not in (None, ""):  # NM tomography: evenly spaced slices
        return position + float(step) * np.arange(count)[:, None] * normal
    return None


def _pointers(ds) -> set[int]:
    value = getattr(ds, "FrameIncrementPointer", None)
    if value is None:
        return set()
    values = value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else [value]
    return {int(v) for v in values}


def frames_kind(ds) -> str:
    """What the frames of a file without frame positions are, in words, for the note."""
    if _pointers(ds) & _TIME_POINTERS:
        return "a time series"
    return "frames without patient positions"


def to_luminance(pixels: np.ndarray, ds, path: str | Path) -> np.ndarray:
    """Decoded pixels ``(F, M, N[, S])`` -> float32 ``(F, M, N)`` grey values (see the module docstring)."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            pixels = apply_color_lut(pixels, ds)
        except Exception as exc:  # noqa: BLE001 - a malformed lookup table
            raise MedshotError(f"cannot apply the palette colour lookup table ({type(exc).__name__}: {exc})",
                               path) from exc
        samples = 3
    if samples >= 3:
        if pixels.shape[-1] < 3:
            raise MedshotError(f"SamplesPerPixel is {samples} but the pixel data is {pixels.shape}", path)
        return np.ascontiguousarray(pixels[..., :3].astype(np.float32) @ LUMA)
    grey = pixels.astype(np.float32)
    if photometric == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 16) or 16)
        signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
        lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0 ** bits - 1)
        grey = (lo + hi) - grey
    return grey


def rescale(ds, k: int) -> tuple[float, float]:
    """Frame ``k``'s (slope, intercept) to real values (HU for CT; RT Dose: the dose grid scaling)."""
    item = _group_item(ds, k, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    slope = float(getattr(source, "RescaleSlope", 1) or 1)
    intercept = float(getattr(source, "RescaleIntercept", 0) or 0)
    dose = getattr(ds, "DoseGridScaling", None)
    if dose not in (None, "") and float(dose) > 0:
        slope *= float(dose)
    return slope, intercept


def lps_affine(position: np.ndarray, orientation: np.ndarray, spacing: np.ndarray,
               slice_vector: np.ndarray | None = None) -> np.ndarray:
    """Source index ``(row, column, slice)`` -> RAS mm, from DICOM's LPS plane geometry."""
    lps = np.eye(4)
    lps[:3, 0] = orientation[3:] * spacing[0]  # down the rows (increasing row index)
    lps[:3, 1] = orientation[:3] * spacing[1]  # along a row (increasing column index)
    lps[:3, 2] = np.cross(orientation[:3], orientation[3:]) if slice_vector is None else slice_vector
    lps[:3, 3] = position
    return RAS_FROM_LPS @ lps


def plane_image(grey: np.ndarray, ds, k: int, path: Path, meta: dict, position: np.ndarray | None = None) -> Image:
    """Frame ``k`` (``(M, N)``, already rescaled) as a 2D image placed by its geometry.

    ``position`` (LPS mm) overrides the frame's own: a frame of an RT Dose or NM volume is placed
    by its offset along the normal, which the plane tags alone do not say.
    """
    own, orientation, spacing = plane_geometry(ds, k)
    position = own if position is None else position
    if spacing is None and getattr(ds, "ImagerPixelSpacing", None) is not None:  # projection X-ray
        spacing = _floats(ds.ImagerPixelSpacing)
    affine = raster_affine()
    if spacing is not None:
        meta["spacing"] = (float(spacing[0]), float(spacing[1]))
        affine = affine @ np.diag([spacing[0], spacing[1], 1.0, 1.0])
        if position is not None and orientation is not None:
            affine = lps_affine(position, orientation, spacing)
    return Image(np.ascontiguousarray(grey), affine, path, "dicom", None, meta)


def slice_order(ds, positions: np.ndarray | None) -> np.ndarray | None:
    """The frames' order along the slice normal when they are evenly spaced slices of a volume, else None."""
    _, orientation, spacing = plane_geometry(ds)
    if positions is None or orientation is None or spacing is None:
        return None
    along = positions @ np.cross(orientation[:3], orientation[3:])
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    step = float(np.median(gaps))
    if step <= 1e-4 or np.abs(gaps - step).max() > FRAME_GAP_TOLERANCE * step:
        return None
    return order


def volume_image(grey: np.ndarray, ds, positions: np.ndarray, order: np.ndarray, path: Path, meta: dict) -> Image:
    """Frames ``(F, M, N)`` placed at ``positions``, taken in ``order`` (see :func:`slice_order`), as a volume."""
    _, orientation, spacing = plane_geometry(ds)
    # Off-normal drift between frames (a gantry tilt) is kept: the slice vector goes from first to last.
    slice_vec = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    data = np.moveaxis(grey[order], 0, -1)  # (row, column, slice), as a series folder is read
    meta["frames"] = {"count": int(len(order)), "used": "all", "kind": "slices of a volume"}
    return from_array(data, lps_affine(positions[order[0]], orientation, spacing, slice_vec), path, "dicom", meta)


def pick_frame(count: int, frame: int | None, path: Path) -> int:
    if frame is None:
        return 0
    if not 0 <= frame < count:
        raise MedshotError(f"frame {frame} is outside the file's {count} frames (0 to {count - 1})", path)
    return frame


def dicom_image(ds, pixels: np.ndarray, path: Path, frame: int | None = None) -> Image:
    """A decoded DICOM dataset as an :class:`Image`: one plane, one frame of several, or a volume.

    Parameters
    ----------
    ds : pydicom Dataset
        The file's dataset (its geometry, photometric interpretation and rescale tags are used).
    pixels : ndarray
        ``ds.pixel_array``: ``(M, N[, S])`` for one frame, ``(F, M, N[, S])`` for several.
    path : Path
        The file, for messages.
    frame : int, optional
        Read this frame (0-based) as a 2D image, even of a volume; default: a volume when the frames
        are its slices, else the first frame (``meta["frame_note"]`` says so).
    """
    count = n_frames(ds, path)
    meta = {"modality": str(getattr(ds, "Modality", "")),
            "photometric": str(getattr(ds, "PhotometricInterpretation", "")).strip().upper()}
    grey = to_luminance(pixels if count > 1 else pixels[None], ds, path)
    if grey.ndim != 3 or grey.shape[0] != count:
        raise MedshotError(f"pixel data is {pixels.shape} for {count} frame(s)", path)
    grey = np.stack([grey[k] * s + i for k, (s, i) in enumerate(rescale(ds, k) for k in range(count))])
    positions = frame_positions(ds, count)
    order = slice_order(ds, positions)
    if frame is None and order is not None:
        return volume_image(grey.astype(np.float32, copy=False), ds, positions, order, path, meta)
    k = pick_frame(count, frame, path)
    if count > 1:
        why = ("slices of a volume" if order is not None else
               "positioned frames that are not evenly spaced slices" if positions is not None else frames_kind(ds))
        meta["frames"] = {"count": count, "used": k, "kind": why}
        meta["frame_note"] = (f"{count} frames ({why}); frame {k} is used" +
                              ("" if frame is not None else ", --frame N picks another (0-based)"))
    return plane_image(grey[k].astype(np.float32, copy=False), ds, k, path, meta,
                       None if positions is None else positions[k])


def header_is_volume(ds) -> bool:
    """Whether a dataset (pixels not needed) is a multi-frame volume, as :func:`dicom_image` reads it."""
    try:
        return slice_order(ds, frame_positions(ds, n_frames(ds))) is not None
    except Exception:  # noqa: BLE001 - a malformed header is not a volume; reading it says why
        return False
