"""Reading images and writing results.

Every image is returned as a :class:`Image2D`: a ``(H, W)`` float32 array of raw intensities
(Hounsfield units for CT DICOM) plus what is needed to write results back in the same geometry.
Coordinates everywhere in medshot are pixels with ``x`` = column, ``y`` = row and the origin at
the centre of the top-left pixel.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MedshotError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES


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
    if image.array.ndim != 2 or min(image.array.shape) < 2:
        raise MedshotError(f"expected a 2D image, got array of shape {image.array.shape}", path)
    if not np.all(np.isfinite(image.array)):
        image.array = np.nan_to_num(image.array, nan=0.0, posinf=0.0, neginf=0.0)
    return image


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
    arr = ds.pixel_array.astype(np.float32)
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


def load_label_map(path: str | Path, shape: tuple[int, int] | None = None, image: Image2D | None = None) -> np.ndarray:
    """Read a label map (0 = background) as ``(H, W)`` int32.

    Binary 0/255 masks become 0/1. With ``image`` given, a 3D NIfTI label map is sliced like it.
    """
    path = Path(path)
    if image is not None and image.slice_index is not None and _suffix(path) in NIFTI_SUFFIXES:
        labels = load_image(path, image.slice_index, image.slice_axis or 2).array
    else:
        labels = load_image(path).array
    if not np.allclose(labels, np.round(labels)):
        raise MedshotError("label map must hold integer labels", path)
    labels = np.round(labels).astype(np.int32)
    values = np.unique(labels)
    if len(values) == 2 and values[0] == 0 and values[1] == 255:
        labels = (labels > 0).astype(np.int32)
    if labels.min() < 0:
        raise MedshotError("label map holds negative labels", path)
    if shape is not None and labels.shape != tuple(shape):
        raise MedshotError(f"mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but the image is "
                           f"{shape[1]}x{shape[0]}", path)
    return labels


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


# ----------------------------------------------------------------------------------------------
# Writing: every output goes to a temporary file first and is renamed into place only when the
# whole job has succeeded, so a failure never leaves a half-written result behind.
# ----------------------------------------------------------------------------------------------


class OutputSet:
    """Collects outputs of one command and moves them into place together.

    Use as a context manager: on an exception the temporary files are deleted and nothing that
    already existed in the output folder is touched.
    """

    def __init__(self, out_dir: str | Path, protect: Iterable[str | Path] = ()):
        self.out_dir = Path(out_dir)
        self._pending: list[tuple[Path, Path]] = []
        self._protect = {Path(p).resolve() for p in protect}

    def __enter__(self) -> OutputSet:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise MedshotError("output path exists and is not a folder", self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def path_for(self, name: str) -> Path:
        final = self.out_dir / name
        if final.resolve() in self._protect:
            raise MedshotError("refusing to overwrite an input file; choose another --out", final)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=self.out_dir)
        os.close(fd)
        self._pending.append((Path(tmp), final))
        return Path(tmp)

    def commit(self) -> list[Path]:
        done = []
        for tmp, final in self._pending:
            os.replace(tmp, final)
            done.append(final)
        self._pending.clear()
        return done

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._pending.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with OutputSet(final.parent) as outputs:
        yield outputs.path_for(final.name)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    Path(path).write_text(buf.getvalue())


def save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(array)).save(path, format="PNG")


def save_label_map(path: Path, labels: np.ndarray, like: Image2D) -> None:
    """Write a label map in the geometry of ``like``: NIfTI with its affine, else 8-bit PNG."""
    labels = np.asarray(labels)
    if like.kind == "nifti" and like.affine is not None:
        import nibabel as nib

        if like.slice_index is not None and like.nifti_shape is not None:
            full = np.zeros(like.nifti_shape[:3], dtype=np.uint8)
            index = [slice(None)] * 3
            index[like.slice_axis or 2] = like.slice_index  # type: ignore[index]
            full[tuple(index)] = labels
            data = full
        else:
            data = labels.astype(np.uint8).reshape(like.nifti_shape or labels.shape)
        img = nib.Nifti1Image(data.astype(np.uint8), like.affine)
        img.set_qform(like.affine, code=1)
        img.set_sform(like.affine, code=1)
        save_nifti_gz(path, img)
    else:
        save_png(path, labels.astype(np.uint8))


def save_nifti_gz(path: Path, img) -> None:
    """Write a nibabel image gzip-compressed whatever ``path`` ends in (temporary names end in .part)."""
    import gzip

    with gzip.open(path, "wb") as fh:
        fh.write(img.to_bytes())


def mask_suffix(image: Image2D) -> str:
    return "_mask.nii.gz" if image.kind == "nifti" else "_mask.png"
