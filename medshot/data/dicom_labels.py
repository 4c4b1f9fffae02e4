"""A user's DICOM SEG or RT Structure Set as a template's label map.

The SEG or RTSTRUCT must reference the template's own DICOM image (a series folder or one file):
frames are matched to its slices by SOP Instance UID (SEG, read with highdicom) or contours to
its slice planes in patient coordinates (RTSTRUCT, filled as :func:`medshot.data.rtstruct.rasterize`
does). Labels are the SEG's segment numbers, or 1, 2, ... in the RTSTRUCT's ROI order; their names
are the segment labels / ROI names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .image import Image

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def dicom_label_kind(path: str | Path) -> str | None:
    """``"seg"``, ``"rtstruct"`` or None (not a DICOM file, or another kind of DICOM object)."""
    from .dicom import looks_like_dicom
    from .rtstruct import RT_STRUCTURE_SET_STORAGE

    path = Path(path)
    if not path.is_file() or not (path.suffix.lower() in (".dcm", ".dicom") or looks_like_dicom(path)):
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not readable as DICOM: let the image readers say why
        return None
    return {SEG_STORAGE: "seg", RT_STRUCTURE_SET_STORAGE: "rtstruct"}.get(str(getattr(ds, "SOPClassUID", "")))


def read_dicom_labels(path: str | Path, like: Image) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG's or RTSTRUCT's structures on ``like``'s grid: label map (like ``like.array``) and label names."""
    from .dicom_out import dicom_sources

    path = Path(path)
    sources = dicom_sources(like)
    if sources is None:
        raise MedshotError("a DICOM SEG/RTSTRUCT mask needs the DICOM image or series it was drawn on as the "
                           "template image", path)
    kind = dicom_label_kind(path)
    frames, names = _seg_frames(path, sources) if kind == "seg" else _rtstruct_frames(path, sources)
    if not frames.any():
        raise MedshotError("the structures of this file cover no pixel of the template image", path)
    data = frames[0] if like.ndim == 2 else np.moveaxis(frames, 0, 2)  # source layout (rows, cols[, slices])
    if like.ndim == 3 and like.source is not None and like.source.ornt is not None:
        from nibabel.orientations import apply_orientation

        data = apply_orientation(data, like.source.ornt)  # the canonical order read_dicom_series gives
    return np.ascontiguousarray(data).astype(np.int32 if like.ndim == 2 else np.uint16), names


def _seg_frames(path: Path, sources: list) -> tuple[np.ndarray, dict[int, str]]:
    try:
        import highdicom as hd
    except ImportError as exc:
        raise MedshotError('reading a DICOM SEG needs highdicom: pip install "medshot[dicom]"', path) from exc
    try:
        seg = hd.seg.segread(str(path))
        uids = [s.SOPInstanceUID for s in sources]
        referenced = {u for _, _, u in seg.get_source_image_uids()}
        if not referenced & set(uids):
            raise MedshotError("this SEG references none of the template image's instances", path)
        frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True,
                                                   assert_missing_frames_are_empty=True)
    except MedshotError:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom raises several types for malformed objects
        raise MedshotError(f"cannot read this DICOM SEG ({type(exc).__name__}: {exc})", path) from exc
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    return np.asarray(frames), names


def _rtstruct_frames(path: Path, sources: list) -> tuple[np.ndarray, dict[int, str]]:
    import pydicom

    from .rtstruct import rasterize

    try:
        masks = rasterize(pydicom.dcmread(str(path)), sources)
    except Exception as exc:  # noqa: BLE001
        raise MedshotError(f"cannot read this RT Structure Set ({type(exc).__name__}: {exc})", path) from exc
    frames = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), np.uint16)
    names = {}
    for label, (name, mask) in enumerate(masks.items(), start=1):
        frames[mask & (frames == 0)] = label  # overlapping ROIs: the earlier one keeps the pixel
        names[label] = name
    return frames, names
