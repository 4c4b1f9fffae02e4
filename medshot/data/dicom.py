"""DICOM: single files (2D, or a volume of positioned frames) and series folders (volumes), with their geometry.

Slices of a series are ordered by ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column directions), never by file name or
InstanceNumber; RescaleSlope/RescaleIntercept are applied per slice. A compressed transfer syntax
whose decoder is not installed gets a one-line error that names the package that adds it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .dicom_frames import dicom_image, header_is_volume
from .image import RAS_FROM_LPS, Image, from_array

# Relative tolerance on the spacing between consecutive DICOM slices; beyond it slices are missing.
SLICE_GAP_TOLERANCE = 0.05

# Packages that add pydicom decoders, by transfer syntax UID prefix (pydicom decodes the rest itself);
# the ``dicom`` extra installs the permissively licensed ones (not GPL pylibjpeg-libjpeg).
_DICOM_DECODERS = (
    (("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"), "pylibjpeg pylibjpeg-openjpeg"),  # JPEG 2000, HTJ2K
    (("1.2.840.10008.1.2.4.8",), "pyjpegls"),  # JPEG-LS
    (("1.2.840.10008.1.2.4.",), "python-gdcm"),  # JPEG baseline, extended, lossless
    (("1.2.840.10008.1.2.5",), "pylibjpeg pylibjpeg-rle"),  # RLE
)


def _decoder_missing(syntax) -> bool:
    """Whether no installed plugin decodes this (compressed) transfer syntax; unknown -> True."""
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3

        return not get_decoder(syntax).is_available
    except Exception:  # noqa: BLE001 - older pydicom, or a syntax it has no decoder class for
        return True


def dicom_pixels(ds, path: str | Path) -> np.ndarray:
    """``ds.pixel_array``, or a one-line error naming the package to install for a compressed syntax."""
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for a missing decoder
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None or not getattr(syntax, "is_compressed", False):
            raise
        packages = next((pk for prefixes, pk in _DICOM_DECODERS if str(syntax).startswith(prefixes)),
                        "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        if _decoder_missing(syntax):
            raise MedshotError(f"DICOM pixel data is compressed ({syntax.name}, {syntax}) and no installed decoder "
                               f'reads it; `pip install "medshot[dicom]"` adds decoders (or `pip install {packages}`)',
                               path) from exc
        # A decoder is there but fails (Pillow reads no 12-bit JPEG, some JPEG 2000 streams): another may not.
        reason = " ".join(str(exc).split("plugins:")[-1].split())[:160]
        raise MedshotError(f"DICOM pixel data ({syntax.name}) could not be decoded by the installed decoders "
                           f'({reason}); `pip install "medshot[dicom]"` (or `pip install {packages}`) may read it',
                           path) from exc


def looks_like_dicom(path: Path) -> bool:
    """Whether a file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dataset(path: Path):
    """The file's pydicom dataset, pixels included.

    A file without the DICOM preamble and file meta header (written by older tools, or a bare
    dataset) is read as a raw dataset, and a missing transfer syntax is taken from how the
    dataset was encoded (uncompressed little/big endian, implicit/explicit VR), which is all such
    a file can be.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        ds = pydicom.dcmread(str(path), force=True)
        if no_pixels(ds):
            raise MedshotError(f"{no_pixels(ds)}; the file also lacks the 'DICM' preamble", path) from None
    if "PixelData" in ds and not getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None):
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is not None:
            syntax = (ImplicitVRLittleEndian if implicit else
                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = syntax
    return ds


def no_pixels(ds) -> str | None:
    """Why a dataset holds no image (an SR, RT plan, DICOMDIR, waveform ...), else None."""
    if any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return None
    sop = getattr(ds, "SOPClassUID", None) or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    what = getattr(sop, "name", None) or str(getattr(ds, "Modality", "") or "unknown kind")
    return f"holds no image: a DICOM object without pixel data ({what})"


def read_dicom_file(path: Path, frame: int | None = None) -> Image:
    """One DICOM file: a 2D image, one frame of a multi-frame file, or the volume its frames are.

    See :mod:`medshot.data.dicom_frames` for how frames, geometry and colour are read.
    """
    with warnings.catch_warnings():
        # pydicom warns about what it tolerates (excess padding, a VR it had to guess): the file is read,
        # and such warnings would break the one-line output of the command line.
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        ds = read_dataset(path)
        why = no_pixels(ds)
        if why:
            raise MedshotError(why, path)
        pixels = dicom_pixels(ds, path)
    return dicom_image(ds, pixels, path, frame)


def dicom_file_is_volume(path: str | Path) -> bool:
    """Whether a DICOM file is a multi-frame volume (reads the header only)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - an unreadable file is not a volume; the reader will say why
        return False
    return header_is_volume(ds)


def dicom_files(folder: Path) -> list[Path]:
    """Files of a folder that look like DICOM (``.dcm`` suffix or the ``DICM`` preamble)."""
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in (".dcm", ".dicom") or looks_like_dicom(p):
            out.append(p)
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


def read_dicom_series(folder: str | Path) -> Image:
    """A folder holding one DICOM series, as a volume (see the module docstring)."""
    import pydicom

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
    gaps = np.diff(along)
    if np.any(gaps < 1e-4):
        dup = headers[order[int(np.argmin(gaps)) + 1]][0]
        raise MedshotError("two slices share one position (duplicate slice?)", dup)
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() > SLICE_GAP_TOLERANCE * step:
        raise MedshotError(f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm "
                           f"(missing slices?)", folder)
    slice_vec = (positions[order[-1]] - positions[order[0]]) / (len(files) - 1)
    # Source layout (row, column, slice), as a single DICOM file is read: one convention in 2D and 3D.
    data = np.empty((rows, cols, len(files)), dtype=np.float32)
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
        data[:, :, k] = pix * slope + intercept
    lps = np.eye(4)
    lps[:3, 0] = col_dir * ps[0]  # down the rows
    lps[:3, 1] = row_dir * ps[1]  # along a row
    lps[:3, 2] = slice_vec
    lps[:3, 3] = positions[order[0]]
    affine = RAS_FROM_LPS @ lps
    meta = {"modality": str(getattr(headers[0][1], "Modality", "")),
            "files": [str(headers[i][0].name) for i in order]}
    return from_array(data, affine, folder, "dicom", meta)
