"""RT Structure Sets: label maps to planar contours in patient coordinates, and back.

Why not rt-utils: it places contour vertices on the centres of boundary pixels and scales the
column axis by the row spacing, so a planning system that fills a contour's interior loses half
of every boundary pixel (and non-square pixels land in the wrong place); see docs/dicom.md for
the measurement. Here each contour is the 0.5 iso-line of the slice's mask (``skimage``'s
marching squares), which runs half way between inside and outside pixel centres: filling the
polygon's interior at pixel centres gives the mask back. Holes are separate contours on the same
slice, read with the even-odd rule as the standard's planning systems do.

Coordinates: a pixel ``(row, col)`` of slice ``k`` lies at ``IPP_k + col * dc * row_dir + row *
dr * col_dir`` (DICOM LPS mm), ``row_dir``/``col_dir`` the first/second triplet of
ImageOrientationPatient and ``(dr, dc)`` PixelSpacing.
"""

from __future__ import annotations

import datetime
import io

import numpy as np

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, the usual RTReferencedStudy class
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID")


def slice_geometry(ds) -> tuple[np.ndarray, np.ndarray]:
    """``(origin (3,), M (3, 2))``: LPS mm of pixel ``(row, col)`` is ``origin + M @ (row, col)``."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return np.array([float(v) for v in ds.ImagePositionPatient]), np.stack([iop[3:] * dr, iop[:3] * dc], axis=1)


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``(K, 2)`` (row, col; pixel indices) of a 2D mask at its 0.5 iso-line, without
    the repeated last point and without collinear vertices."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float32), 1)  # closes contours that touch the border
    out = []
    for c in find_contours(padded, 0.5):
        c = c[:-1] - 1.0
        prev, nxt = np.roll(c, 1, axis=0), np.roll(c, -1, axis=0)
        cross = (c[:, 0] - prev[:, 0]) * (nxt[:, 1] - c[:, 1]) - (c[:, 1] - prev[:, 1]) * (nxt[:, 0] - c[:, 0])
        keep = np.abs(cross) > 1e-9
        if keep.sum() >= 3:
            out.append(c[keep])
    return out


def rtstruct_bytes(sources: list, frames: np.ndarray, structures: list, version: str = "") -> bytes:
    """An RT Structure Set with one ROI per structure, contoured on each source slice.

    Parameters
    ----------
    sources : list of pydicom.Dataset
        The referenced image headers, one per frame, in frame order.
    frames : ndarray (n_slices, rows, columns)
        Label map, file values of ``structures``.
    structures : list of medshot.data.dicom_out.Structure
        ROI numbers are 1.. in this order; ROI names and display colours from them.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    first = sources[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("rtstruct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, meta.MediaStorageSOPInstanceUID
    for key in _COPIED:
        setattr(ds, key, getattr(first, key, ""))
    if not ds.FrameOfReferenceUID:
        ds.FrameOfReferenceUID = generate_uid()
    now = datetime.datetime.now()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", generate_uid(), 9002, 1
    ds.SeriesDescription = "medshot structures"
    ds.Manufacturer, ds.SoftwareVersions = "medshot", version or "unknown"
    ds.StructureSetLabel, ds.StructureSetName = "MEDSHOT", "medshot"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContentDate, ds.ContentTime = ds.StructureSetDate, ds.StructureSetTime

    def image_ref(src) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        return ref

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = Sequence([image_ref(s) for s in sources])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = _STUDY_COMPONENT, ds.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = ds.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])

    rois, contours, observations = [], [], []
    geometry = [slice_geometry(s) for s in sources]
    for number, s in enumerate(structures, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, ds.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = s.name[:64] or f"label {s.value}", "AUTOMATIC"
        rois.append(roi)
        items = []
        for k, src in enumerate(sources):
            origin, M = geometry[k]
            for c in mask_contours(frames[k] == s.value):
                item = Dataset()
                item.ContourImageSequence = Sequence([image_ref(src)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(c)
                item.ContourData = [f"{v:.4f}" for v in (origin + c @ M.T).ravel()]
                items.append(item)
        rc = Dataset()
        rc.ROIDisplayColor = [int(v) for v in s.rgb]
        rc.ReferencedROINumber = number
        if items:
            rc.ContourSequence = Sequence(items)
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        obs.ROIObservationLabel = roi.ROIName
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def rasterize(ds, sources: list) -> dict[str, np.ndarray]:
    """An RT Structure Set's ROIs as masks ``(n_slices, rows, columns)`` over ``sources`` (frame order).

    Each contour is placed on the slice whose plane it lies in (nearest along the normal, within
    half a slice) and filled at pixel centres; the contours of one slice combine by the even-odd rule.
    """
    from skimage.draw import polygon2mask

    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    geometry = [slice_geometry(s) for s in sources]
    origin0, M = geometry[0]
    normal = np.cross(M[:, 1], M[:, 0])  # row_dir x col_dir
    normal /= np.linalg.norm(normal)
    along = np.array([g[0] @ normal for g in geometry])
    half = 0.5 * (float(np.median(np.abs(np.diff(along)))) if len(along) > 1 else 1.0)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for rc in getattr(ds, "ROIContourSequence", []):
        mask = np.zeros((len(sources), rows, cols), bool)
        for item in getattr(rc, "ContourSequence", []):
            pts = np.array([float(v) for v in item.ContourData]).reshape(-1, 3)
            level = float(np.mean(pts @ normal))
            k = int(np.argmin(np.abs(along - level)))
            if abs(along[k] - level) > half + 1e-3:
                continue
            origin, Mk = geometry[k]
            rc_idx = np.linalg.lstsq(Mk, (pts - origin).T, rcond=None)[0].T  # (row, col)
            mask[k] ^= polygon2mask((rows, cols), rc_idx)
        out[names.get(int(rc.ReferencedROINumber), str(rc.ReferencedROINumber))] = mask
    return out
