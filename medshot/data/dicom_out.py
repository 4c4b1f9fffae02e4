"""DICOM results for DICOM targets: a Segmentation (SEG) and an RT Structure Set (RTSTRUCT).

Both reference the target's own instances (SOP Instance UIDs, Frame of Reference, study and
patient), so a PACS files them beside the series, OHIF and 3D Slicer overlay them on it and a
treatment-planning system imports the structures. The SEG is written by ``highdicom`` (binary,
one segment per label, empty frames omitted); the RTSTRUCT by :mod:`medshot.data.rtstruct`.
Both need ``pip install "medshot[dicom]"``.

Geometry: a label map is handed over on the target's *source* grid (the series' slices in the
order of :func:`medshot.data.dicom.read_dicom_series`: ``(rows, columns, slices)``; one file:
``(rows, columns)``), so frame ``k`` of the SEG is exactly slice ``k`` of the series and no
resampling happens anywhere.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .image import Image

EXTRA = 'pip install "medshot[dicom]"'
SEG_SUFFIX = "_seg.dcm"
RTSTRUCT_SUFFIX = "_rtstruct.dcm"


@dataclass
class Structure:
    """One labelled structure as DICOM names it.

    Attributes
    ----------
    value : int
        Its value in the label map handed to the writers (the template mask file's value).
    name : str
        Segment label / ROI name (the template's label name).
    rgb : tuple of int
        Display colour, 0-255 each (the overlay's colour of the label).
    """

    value: int
    name: str
    rgb: tuple[int, int, int]


def dicom_sources(image: Image) -> list | None:
    """The target's DICOM headers in source-array slice order, or None when it cannot carry DICOM results.

    A series folder gives one dataset per slice (``image.meta["files"]`` is that order); a single
    single-frame file gives itself. Multi-frame files and images without a frame of reference in
    patient space (no ImagePositionPatient/ImageOrientationPatient) get no DICOM results.
    """
    import pydicom

    if image.kind != "dicom" or image.path is None:
        return None
    path = Path(image.path)
    files = [path / name for name in image.meta.get("files", [])] if path.is_dir() else [path]
    if not files:
        return None
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    complete_type2(headers)
    first = headers[0]
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        return None
    if not all(hasattr(first, t) for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
        return None
    return headers


# Patient and study attributes a SEG/RTSTRUCT must carry (type 2: present, possibly empty); some
# anonymised or synthetic series drop them, which a writer would otherwise refuse.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def complete_type2(headers: list) -> None:
    """Fill missing type-2 patient/study attributes with empty values and a missing Frame of Reference
    with one new UID shared by all slices (in memory only: the input files are never touched)."""
    from pydicom.uid import generate_uid

    frame_of_reference = getattr(headers[0], "FrameOfReferenceUID", None) or generate_uid()
    for ds in headers:
        for key in _TYPE2:
            if key not in ds:
                setattr(ds, key, "")
        if not getattr(ds, "FrameOfReferenceUID", None):
            ds.FrameOfReferenceUID = frame_of_reference


def source_frames(image: Image, labels: np.ndarray) -> np.ndarray:
    """A label map on ``image``'s grid as frames of the source: ``(n_slices, rows, columns)``."""
    src = image.to_source_array(np.asarray(labels))
    return src[None] if src.ndim == 2 else np.moveaxis(src, 2, 0)


def dicom_writers_installed() -> bool:
    """Whether highdicom (the SEG writer, in the ``dicom`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("highdicom") is not None


def require_dicom_writers() -> None:
    """One-line error naming the extra when highdicom is not installed."""
    if not dicom_writers_installed():
        raise MedshotError(f"DICOM SEG/RTSTRUCT output needs highdicom: {EXTRA} (or turn it off with "
                           "--no-dicom-out)")


def seg_bytes(sources: list, frames: np.ndarray, structures: list[Structure], version: str = "") -> bytes:
    """A binary DICOM Segmentation of ``frames`` over ``sources``.

    Parameters
    ----------
    sources : list of pydicom.Dataset
        Source headers, one per frame, in frame order.
    frames : ndarray (n_slices, rows, columns)
        Label map (file values of ``structures``; other values are background).
    structures : list of Structure
        One segment each, numbered 1.. in this order.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    segments = np.zeros(frames.shape, np.uint16)
    for number, s in enumerate(structures, start=1):
        segments[frames == s.value] = number
    algorithm = hd.AlgorithmIdentificationSequence(name="medshot", version=version or "unknown",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=s.name[:64] or f"label {s.value}",
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_id=f"label {s.value}", tracking_uid=generate_uid(),
        display_color=hd.color.CIELabColor.from_rgb(*s.rgb)) for number, s in enumerate(structures, start=1)]
    # A label map with segment numbers as values is what highdicom takes for non-overlapping segments.
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segments if len(sources) > 1 else segments[0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=9001, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="medshot", manufacturer_model_name="medshot one-shot segmentation",
        software_versions=version or "unknown", device_serial_number="none",
        series_description="medshot segmentation", content_label="MEDSHOT", omit_empty_frames=True)
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_outputs(image: Image, labels: np.ndarray, structures: list[Structure], version: str = "") -> dict[str, bytes]:
    """``<stem>_seg.dcm`` and ``<stem>_rtstruct.dcm`` for a DICOM target (nothing for other targets).

    Parameters
    ----------
    image : Image
        The target as read (its ``path`` and ``meta["files"]`` locate the source instances).
    labels : ndarray, image.shape
        Label map on the target's (canonical) grid, in file values.
    structures : list of Structure
        The labels to write, in order.
    """
    from .rtstruct import rtstruct_bytes

    sources = dicom_sources(image)
    if sources is None or not structures:
        return {}
    require_dicom_writers()
    frames = source_frames(image, labels)
    if frames.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise MedshotError(f"label map frames {frames.shape} do not match the DICOM source "
                           f"({len(sources)} x {sources[0].Rows} x {sources[0].Columns})", image.path)
    return {image.stem + SEG_SUFFIX: seg_bytes(sources, frames, structures, version),
            image.stem + RTSTRUCT_SUFFIX: rtstruct_bytes(sources, frames, structures, version)}
