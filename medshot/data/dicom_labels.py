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


def references(path: str | Path) -> tuple[set[str], set[str]]:
    """SOP Instance UIDs and Series Instance UIDs a SEG or RTSTRUCT references (its own series left out)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for broken files
        raise MedshotError(f"cannot read DICOM header ({type(exc).__name__}: {exc})", Path(path)) from exc
    instances: set[str] = set()
    series: set[str] = set()

    def visit(_, elem) -> None:
        if elem.keyword == "ReferencedSOPInstanceUID":
            instances.add(str(elem.value))
        elif elem.keyword == "SeriesInstanceUID":  # inside the referenced-series sequences
            series.add(str(elem.value))

    ds.walk(visit)
    series.discard(str(getattr(ds, "SeriesInstanceUID", "")))
    return instances, series


def find_referenced_source(path: str | Path, max_files: int = 5000) -> Path | None:
    """The DICOM series folder or single file that a SEG or RTSTRUCT at ``path`` was drawn on, when it lies near.

    Looked for, in this order: the one DICOM image file beside it that it references (a 2D
    image), then in the folders inside its folder and beside it (siblings): a series folder, or
    the one referenced file of a folder that is not a series. A
    SEG or RTSTRUCT saved inside its series' folder is not matched (that folder then holds two
    series). A folder or file counts when it holds
    an instance or is of a series the object references (SOP / Series Instance UID; headers only; at most
    ``max_files`` headers are read). None when nothing near is referenced.
    """
    import pydicom

    from .dicom import dicom_files, is_dicom_series_dir

    path = Path(path).resolve()
    instances, series = references(path)
    if not instances and not series:
        return None
    here = path.parent
    singles = [f for f in dicom_files(here) if f != path]
    folders = [d for d in sorted(here.iterdir()) if d.is_dir()]
    folders += [d for d in sorted(here.parent.iterdir()) if d.is_dir() and d != here] if here.parent != here else []
    budget = max_files

    def referenced(files: list[Path]) -> bool:
        nonlocal budget
        for f in files:
            if budget <= 0:
                return False
            budget -= 1
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True,
                                     specific_tags=["SOPInstanceUID", "SeriesInstanceUID"])
            except Exception:  # noqa: BLE001 - an unreadable neighbour is simply not the source
                continue
            if str(getattr(ds, "SOPInstanceUID", "")) in instances or str(getattr(ds, "SeriesInstanceUID", "")) \
                    in series:
                return True
        return False

    beside = [f for f in singles if referenced([f]) and dicom_label_kind(f) is None]
    if len(beside) == 1:  # several: a series folder the object was put into, which is not one series
        return beside[0]
    for folder in folders:
        files = dicom_files(folder)
        if is_dicom_series_dir(folder):
            if referenced(files[:1]):
                return folder
            continue
        hits = [f for f in files if referenced([f]) and dicom_label_kind(f) is None]  # 2D images, one a file
        if len(hits) == 1:
            return hits[0]
    return None
