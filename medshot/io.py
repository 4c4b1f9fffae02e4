"""Reading images and writing results.

Every image is returned as a :class:`Image2D`: a ``(H, W)`` float32 array of raw intensities
(Hounsfield units for CT DICOM) plus what is needed to write results back in the same geometry.
Coordinates everywhere in medshot are pixels with ``x`` = column, ``y`` = row and the origin at
the centre of the top-left pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.errors import MedshotError
from .outputs import (  # noqa: F401 - the writers lived here first; importers keep using medshot.io
    OutputSet,
    atomic_path,
    mask_suffix,
    save_label_map,
    save_nifti_gz,
    save_png,
    write_csv,
    write_text_atomic,
)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES
# Smallest image side medshot works on (pixels): its descriptors look at several scales of a
# neighbourhood, and below this there is nothing to match (2x2 images used to crash the segmenter).
MIN_SIDE = 8
# Largest label value: label maps are written as 8- or 16-bit PNG / NIfTI.
MAX_LABEL = 65535


@dataclass
class Image2D:
    """A 2D image as medshot works on it.

    Attributes
    ----------
    array : ndarray, shape (H, W), float32
        Raw intensities (HU for CT DICOM; stored values otherwise).
    path : Path or None
        Where it came from.
    kind : str
        ``"raster"``, ``"nifti"``, ``"dicom"`` or ``"array"``.
    affine : ndarray (4, 4) or None
        NIfTI affine of the source file, to write masks back in its geometry.
    nifti_shape : tuple or None
        Full shape of the NIfTI data array (a 2D slice of 3D data keeps it for the output).
    slice_axis, slice_index : int or None
        Which slice of a 3D NIfTI this is.
    """

    array: np.ndarray
    path: Path | None = None
    kind: str = "array"
    affine: np.ndarray | None = None
    nifti_shape: tuple[int, ...] | None = None
    slice_axis: int | None = None
    slice_index: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    @property
    def stem(self) -> str:
        if self.path is None:
            return "image"
        return path_stem(self.path)


def path_stem(path: str | Path) -> str:
    """File name without its image suffix (``scan.nii.gz`` -> ``scan``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def is_image_path(path: Path) -> bool:
    return path.is_file() and (_suffix(path) in IMAGE_SUFFIXES)


def load_image(path: str | Path, slice_index: int | None = None, slice_axis: int = 2) -> Image2D:
    """Read a 2D image from PNG/JPEG/TIFF, NIfTI (2D, or one slice of 3D) or a DICOM file.

    Parameters
    ----------
    path : str or Path
    slice_index : int, optional
        For 3D NIfTI: which slice along ``slice_axis``; default the middle one.
    slice_axis : int
        Array axis of a 3D NIfTI to slice along (default 2, the third voxel axis).

    Raises
    ------
    MedshotError
        When the file is missing, unreadable, truncated or not 2D/3D.
    """
    path = Path(path)
    if not path.exists():
        raise MedshotError("file not found", path)
    if path.is_dir():
        raise MedshotError("is a folder, expected an image file", path)
    suffix = _suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            image = _load_nifti(path, slice_index, slice_axis)
        elif suffix in DICOM_SUFFIXES or (suffix not in RASTER_SUFFIXES and _looks_like_dicom(path)):
            image = _load_dicom(path)
        elif suffix in RASTER_SUFFIXES:
            image = _load_raster(path)
        else:
            raise MedshotError(
                f"unsupported file type '{suffix or path.name}' (expected one of {', '.join(IMAGE_SUFFIXES)})",
                path,
            )
    except MedshotError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader fails differently; name the file instead
        raise MedshotError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
    if image.array.ndim != 2:
        raise MedshotError(f"expected a 2D image, got array of shape {image.array.shape}", path)
    if min(image.array.shape) < MIN_SIDE:
        H, W = image.array.shape
        raise MedshotError(f"image is {W}x{H} pixels; medshot needs at least {MIN_SIDE} pixels on each side", path)
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


def check_contrast(array: np.ndarray, path: str | Path | None) -> None:
    """Refuse a constant image: there is nothing to match in it (an all-NaN image used to become one)."""
    lo, hi = float(np.min(array)), float(np.max(array))
    if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
        raise MedshotError(f"image is constant (every pixel is {lo:g}); nothing to match", path)


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _load_raster(path: Path) -> Image2D:
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # forces a full decode: truncated files fail here, not later
        mode = im.mode
        if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
            arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            arr = np.asarray(im).astype(np.float32)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    return Image2D(array=np.ascontiguousarray(arr, dtype=np.float32), path=path, kind="raster", meta={"mode": mode})


def _load_nifti(path: Path, slice_index: int | None, slice_axis: int) -> Image2D:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    shape = data.shape
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 2:
        return Image2D(data, path, "nifti", affine=img.affine, nifti_shape=shape)
    if data.ndim != 3:
        raise MedshotError(f"expected 2D or 3D NIfTI data, got shape {shape}", path)
    if not 0 <= slice_axis <= 2:
        raise MedshotError(f"slice axis must be 0, 1 or 2, got {slice_axis}", path)
    n = data.shape[slice_axis]
    index = n // 2 if slice_index is None else slice_index
    if not 0 <= index < n:
        raise MedshotError(f"slice {index} is outside the volume ({n} slices along axis {slice_axis})", path)
    arr = np.take(data, index, axis=slice_axis)
    return Image2D(
        np.ascontiguousarray(arr), path, "nifti", affine=img.affine, nifti_shape=data.shape,
        slice_axis=slice_axis, slice_index=index,
    )


def _load_dicom(path: Path) -> Image2D:
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = dicom_pixels(ds, path).astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and getattr(ds, "SamplesPerPixel", 1) > 1:
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif arr.ndim == 3:
        arr = arr[arr.shape[0] // 2]
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + intercept
    meta = {"modality": str(getattr(ds, "Modality", ""))}
    spacing = getattr(ds, "PixelSpacing", None)
    if spacing is not None:
        meta["spacing_yx"] = (float(spacing[0]), float(spacing[1]))
    return Image2D(np.ascontiguousarray(arr), path, "dicom", meta=meta)


# Packages that add pydicom decoders, by transfer syntax UID prefix (pydicom decodes the rest itself).
_DICOM_DECODERS = (
    (("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"), "pylibjpeg pylibjpeg-openjpeg"),  # JPEG 2000, HTJ2K
    (("1.2.840.10008.1.2.4.8",), "pylibjpeg pylibjpeg-libjpeg"),  # JPEG-LS
    (("1.2.840.10008.1.2.4.",), "pylibjpeg pylibjpeg-libjpeg"),  # JPEG baseline, extended, lossless
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
        if syntax is None or not getattr(syntax, "is_compressed", False) or not _decoder_missing(syntax):
            raise
        packages = next((pk for prefixes, pk in _DICOM_DECODERS if str(syntax).startswith(prefixes)),
                        "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise MedshotError(f"DICOM pixel data is compressed ({syntax.name}, {syntax}) and no installed decoder "
                           f"reads it; `pip install {packages}` (or python-gdcm) adds one", path) from exc


def normalize_intensity(
    array: np.ndarray, window: tuple[float, float] | None = None, percentiles: tuple[float, float] = (0.5, 99.5)
) -> np.ndarray:
    """Map intensities to [0, 1].

    With ``window=(low, high)`` (e.g. a CT HU window such as ``(-160, 240)``) values are clipped to it;
    otherwise robust percentiles of the image set the range, so scanners and bit depths agree.
    """
    a = np.asarray(array, dtype=np.float32)
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        lo, hi = np.percentile(a, percentiles)
        if hi - lo < 1e-6:
            lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-6:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def read_label_map(path: str | Path, shape: tuple[int, int] | None = None,
                   image: Image2D | None = None) -> tuple[np.ndarray, dict[int, int]]:
    """Read a label map (0 = background): ``(H, W)`` int32 labels and their values in the file.

    A binary 0/255 mask is worked on as 0/1 (as evaluation ground truth is read); the second value
    returned, ``{1: 255}`` then (``{}`` otherwise), lets outputs be written with the file's own values.
    With ``image`` given, a 3D NIfTI label map is sliced like it.
    """
    path = Path(path)
    if image is not None and image.slice_index is not None and _suffix(path) in NIFTI_SUFFIXES:
        labels = load_image(path, image.slice_index, image.slice_axis or 2).array
    else:
        labels = load_image(path).array
    if not np.allclose(labels, np.round(labels)):
        raise MedshotError("label map must hold integer labels", path)
    if labels.min() < 0:
        raise MedshotError("label map holds negative labels", path)
    if labels.max() > MAX_LABEL:
        raise MedshotError(f"label {labels.max():g} is too large (labels go up to {MAX_LABEL})", path)
    labels = np.round(labels).astype(np.int32)
    values = np.unique(labels)
    file_values: dict[int, int] = {}
    if len(values) == 2 and values[0] == 0 and values[1] == 255:
        labels = (labels > 0).astype(np.int32)
        file_values = {1: 255}
    if shape is not None and labels.shape != tuple(shape):
        raise MedshotError(f"mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but the image is "
                           f"{shape[1]}x{shape[0]}", path)
    return labels, file_values


def load_label_map(path: str | Path, shape: tuple[int, int] | None = None, image: Image2D | None = None) -> np.ndarray:
    """Read a label map (0 = background) as ``(H, W)`` int32; binary 0/255 masks become 0/1.

    See :func:`read_label_map`, which also returns the file's label values.
    """
    return read_label_map(path, shape, image)[0]


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files; folders with no image are errors."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MedshotError("file not found", p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if is_image_path(q))
            if not found:
                raise MedshotError(f"folder holds no image ({', '.join(IMAGE_SUFFIXES)})", p)
            out.extend(found)
        else:
            out.append(p)
    return out
