"""Reading images, volumes and label maps into :class:`~medshot.data.image.Image`.

One entry point, :func:`read_image`, for PNG/JPEG/TIFF/BMP, NIfTI (2D, one slice of 3D, or a
volume), DICOM files and DICOM series folders. A problem a user can fix (missing, truncated,
unreadable, too small, without any finite value) is a one-line :class:`MedshotError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .dicom import dicom_file_is_volume, is_dicom_series_dir, looks_like_dicom, read_dicom_file, read_dicom_series
from .image import Image, Source, from_array, raster_affine

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES
# Smallest side medshot works on (pixels): its descriptors look at several scales of a neighbourhood,
# and below this there is nothing to match (2x2 images used to crash the segmenter). A volume needs at
# least two slices.
MIN_SIDE = 8
# Largest label value: label maps are written as 8- or 16-bit PNG / NIfTI.
MAX_LABEL = 65535
# Medical formats medshot does not read, named in the refusal (a converter writes NIfTI from each).
OTHER_FORMATS = {".hdr": "Analyze/NIfTI header-image pair", ".img": "Analyze/NIfTI header-image pair",
                 ".mgz": "FreeSurfer MGH", ".mgh": "FreeSurfer MGH", ".mnc": "MINC", ".par": "Philips PAR/REC",
                 ".rec": "Philips PAR/REC", ".head": "AFNI BRIK/HEAD", ".brik": "AFNI BRIK/HEAD", ".v": "ECAT",
                 ".nrrd": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage", ".gz": "gzip-compressed"}


def suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_image_path(path: Path) -> bool:
    return path.is_file() and suffix(path) in IMAGE_SUFFIXES


def nifti_is_volume(path: str | Path) -> bool:
    """Whether a NIfTI file holds 3D data with more than one slice (reads the header only)."""
    import nibabel as nib

    try:
        full = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - an unreadable file is not a volume; the reader will say why
        return False
    # (X, Y, Z), (X, Y, Z, 1, ...) or a time series (X, Y, Z, T) with Z > 1; a single-slice file stays 2D.
    return len(full) >= 3 and full[2] > 1 and all(s == 1 for s in full[4:])


def is_volume_path(path: str | Path, slice_index: int | None = None) -> bool:
    """Input that is a volume: a 3D NIfTI (unless a slice is asked for), a DICOM series folder, or a
    DICOM file whose frames are evenly spaced slices (headers only)."""
    path = Path(path)
    if path.is_dir():
        return is_dicom_series_dir(path)
    if slice_index is not None or not path.is_file():
        return False
    sfx = suffix(path)
    if sfx in NIFTI_SUFFIXES:
        return nifti_is_volume(path)
    return (sfx in DICOM_SUFFIXES or (sfx not in RASTER_SUFFIXES and looks_like_dicom(path))) and \
        dicom_file_is_volume(path)


def read_image(path: str | Path, slice_index: int | None = None, slice_axis: int = 2,
               frame: int | None = None) -> Image:
    """Read a 2D image or a volume.

    Parameters
    ----------
    path : str or Path
        An image file, or a DICOM series folder.
    slice_index : int, optional
        For 3D NIfTI: read only this slice along ``slice_axis``, as a 2D image (default: the volume).
    slice_axis : int
        Array axis of a 3D NIfTI to slice along.
    frame : int, optional
        Which frame (0-based) of a file with several: a time point of a 4D NIfTI (a volume), a frame
        of a multi-frame DICOM (a 2D image). Default: a DICOM whose frames are evenly spaced slices
        is read as a volume; otherwise frame 0 is used and ``meta["frame_note"]`` says so.

    Raises
    ------
    MedshotError
        When the file is missing, unreadable, truncated, not 2D/3D, too small or all NaN.
    """
    path = Path(path)
    if not path.exists():
        raise MedshotError("file not found", path)
    sfx = suffix(path)
    try:
        if path.is_dir():
            if not is_dicom_series_dir(path):
                raise MedshotError("is a folder but not a DICOM series (expected an image file, or a folder of "
                                   "DICOM slices with positions and orientations)", path)
            image = read_dicom_series(path)
        elif sfx in NIFTI_SUFFIXES:
            image = _read_nifti(path, slice_index, slice_axis, frame)
        elif sfx in DICOM_SUFFIXES or (sfx not in RASTER_SUFFIXES and looks_like_dicom(path)):
            image = read_dicom_file(path, frame)
        elif sfx in RASTER_SUFFIXES:
            image = _read_raster(path)
        else:
            if sfx in OTHER_FORMATS:
                raise MedshotError(f"unsupported file type '{sfx}' ({OTHER_FORMATS[sfx]}); medshot reads NIfTI, "
                                   f"DICOM and PNG/JPEG/TIFF/BMP: convert it to NIfTI", path)
            raise MedshotError(f"unsupported file type '{sfx or path.name}' (expected one of "
                               f"{', '.join(IMAGE_SUFFIXES)}, or a DICOM series folder)", path)
    except MedshotError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader fails differently; name the file instead
        raise MedshotError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
    if image.ndim == 2 and min(image.shape) < MIN_SIDE:
        H, W = image.shape
        raise MedshotError(f"image is {W}x{H} pixels; medshot needs at least {MIN_SIDE} pixels on each side", path)
    if image.ndim == 3 and min(image.shape) < 2:
        raise MedshotError(f"expected a 3D volume, got shape {image.shape}", path)
    if image.ndim not in (2, 3):
        raise MedshotError(f"expected a 2D image or a 3D volume, got shape {image.shape}", path)
    image.array = fill_missing(image.array, image.meta, path)
    return image


def fill_missing(array: np.ndarray, meta: dict, path: str | Path | None) -> np.ndarray:
    """NaN/Inf pixels are missing data: refuse an image without any finite value, else fill them.

    They get the lowest finite value (the background of CT, MR and X-ray alike, where 0 could be
    soft tissue), and ``meta["missing_fraction"]`` records how many there were so that the command
    line can say so.
    """
    finite = np.isfinite(array)
    if finite.all():
        return array
    if not finite.any():
        raise MedshotError("image holds no finite value (every pixel is NaN or Inf)", path)
    meta["missing_fraction"] = float(1.0 - finite.mean())
    return np.where(finite, array, array[finite].min()).astype(array.dtype, copy=False)


def missing_note(meta: dict) -> str | None:
    """A one-line note for an image whose NaN/Inf pixels were filled, else None."""
    frac = meta.get("missing_fraction")
    if not frac:
        return None
    return (f"{100 * frac:.3g} % of the pixels are NaN or Inf; treated as missing (filled with the lowest "
            f"finite value)")


def frame_note(meta: dict) -> str | None:
    """A one-line note for a file of several frames of which one was used (which, and why), else None."""
    return meta.get("frame_note")


def check_contrast(array: np.ndarray, path: str | Path | None) -> None:
    """Refuse a constant image: there is nothing to match in it (an all-NaN image used to become one)."""
    lo, hi = float(np.min(array)), float(np.max(array))
    if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
        raise MedshotError(f"image is constant (every pixel is {lo:g}); nothing to match", path)


def _read_raster(path: Path) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        im.load()  # forces a full decode: truncated files fail here, not later
        mode = im.mode
        if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        else:
            arr = np.asarray(im).astype(np.float32)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    return Image(np.ascontiguousarray(arr, dtype=np.float32), raster_affine(), path, "raster", None, {"mode": mode})


def _read_nifti(path: Path, slice_index: int | None, slice_axis: int, frame: int | None = None) -> Image:
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img.header, nib.Nifti1Header):  # CIFTI-2 loads from a .nii as grey-ordinate data
        raise MedshotError(f"is a {type(img).__name__.replace('Image', '')} file (not an image on a voxel "
                           f"grid); medshot reads NIfTI images", path)
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    meta = {"qform_code": int(img.header["qform_code"]), "sform_code": int(img.header["sform_code"])}
    if len(shape) > 4:
        raise MedshotError(f"expected 2D, 3D or 4D (a time series of volumes) NIfTI data, got shape {img.shape}",
                           path)
    if len(shape) == 4:
        count = shape[3]
        k = 0 if frame is None else frame
        if not 0 <= k < count:
            raise MedshotError(f"frame {k} is outside the file's {count} frames (0 to {count - 1})", path)
        # Only this volume is read (the array proxy applies the header's scl_slope/scl_inter).
        data = np.asarray(img.dataobj[..., k], dtype=np.float32).reshape(shape[:3])
        meta["frames"] = {"count": count, "used": k, "kind": "a time series of volumes"}
        meta["frame_note"] = (f"{count} volumes (a time series, 4th axis); volume {k} is used" +
                              ("" if frame is not None else ", --frame N picks another (0-based)"))
    else:
        if frame not in (None, 0):
            raise MedshotError(f"frame {frame} asked for, but the file holds one image", path)
        # float32 directly: get_fdata's default float64 would double the memory of a large CT.
        data = img.get_fdata(dtype=np.float32).reshape(shape)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 2:
        return Image(np.ascontiguousarray(data), np.asarray(img.affine, float), path, "nifti",
                     Source(img.affine, tuple(img.shape)), meta)
    if slice_index is None:
        return from_array(data, img.affine, path, "nifti", meta)
    if not 0 <= slice_axis <= 2:
        raise MedshotError(f"slice axis must be 0, 1 or 2, got {slice_axis}", path)
    n = data.shape[slice_axis]
    if not 0 <= slice_index < n:
        raise MedshotError(f"slice {slice_index} is outside the volume ({n} slices along axis {slice_axis})", path)
    kept = [a for a in range(3) if a != slice_axis]
    affine = np.eye(4)
    affine[:, 0], affine[:, 1] = img.affine[:, kept[0]], img.affine[:, kept[1]]
    affine[:, 2] = img.affine[:, slice_axis]
    affine[:3, 3] = img.affine[:3, 3] + slice_index * img.affine[:3, slice_axis]
    return Image(np.ascontiguousarray(np.take(data, slice_index, axis=slice_axis)), affine, path, "nifti",
                 Source(img.affine, tuple(data.shape), None, slice_axis, slice_index), meta)


def read_label_map(path: str | Path, like: Image) -> tuple[np.ndarray, dict[int, int]]:
    """Read a label map (0 = background) on the grid of ``like``: labels and their values in the file.

    The map must cover the same pixels as ``like`` (2D: same size; a slice of a 3D NIfTI is sliced
    like it; 3D: same world geometry, whatever its own axis order). A binary 0/255 mask is worked on
    as 0/1; the second value returned, ``{1: 255}`` then (``{}`` otherwise), lets outputs be written
    with the file's own values. Labels come back as ``int32`` in 2D and ``uint16`` for volumes (a
    CT-sized label map is then 150 MB rather than 300 MB).
    """
    path = Path(path)
    from .dicom_labels import dicom_label_kind, read_dicom_labels

    if dicom_label_kind(path):  # a DICOM SEG or RT Structure Set drawn on ``like``
        return read_dicom_labels(path, like)[0], {}
    source = like.source
    if like.ndim == 2 and source is not None and source.slice_index is not None and suffix(path) in NIFTI_SUFFIXES:
        labels = read_image(path, source.slice_index, 2 if source.slice_axis is None else source.slice_axis)
    else:
        labels = read_image(path)
    if labels.ndim != like.ndim:
        raise MedshotError(f"label map is {labels.ndim}D but the image is {like.ndim}D", path)
    if like.ndim == 2 and labels.shape != like.shape:
        raise MedshotError(f"mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but the image is "
                           f"{like.shape[1]}x{like.shape[0]}", path)
    if like.ndim == 3 and (labels.shape != like.shape or
                           not np.allclose(labels.affine, like.affine, atol=1e-2 * float(like.spacing.min()))):
        shown = labels.source.shape if labels.source else labels.shape
        want = like.source.shape if like.source else like.shape
        raise MedshotError(f"label map geometry (shape {shown}) differs from the image's (shape {want}); it must "
                           "share the image's voxel grid and affine", path)
    values = labels.array
    if not np.allclose(values, np.round(values)):
        raise MedshotError("label map must hold integer labels", path)
    if values.min() < 0:
        raise MedshotError("label map holds negative labels", path)
    if values.max() > MAX_LABEL:
        raise MedshotError(f"label {values.max():g} is too large (labels go up to {MAX_LABEL})", path)
    out = np.round(values).astype(np.int32 if like.ndim == 2 else np.uint16)
    present = np.unique(out)
    if len(present) == 2 and present[0] == 0 and present[1] == 255:
        return (out > 0).astype(out.dtype), {1: 255}
    return out, {}


def list_images(paths) -> list[Path]:
    """Expand files and folders into a sorted list of images (a DICOM series folder is one image).

    A folder that is neither a DICOM series nor holds an image is an error.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MedshotError("file not found", p)
        if p.is_dir() and is_dicom_series_dir(p):
            out.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if is_image_path(q) or (q.is_dir() and is_dicom_series_dir(q)))
            if not found:
                raise MedshotError(f"folder holds no image ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series", p)
            out.extend(found)
        else:
            out.append(p)
    return out
