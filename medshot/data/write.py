"""Writing results: atomic files with the user's umask, and the encoders the batch workers use.

Every output goes to a temporary ``.NAME.XXXXXXXX.part`` file beside its final name and is renamed
into place only when it is complete, so a reader never sees a half-written file. ``tempfile``
creates those files with mode 0600; they are given ``0666 & ~umask`` before the rename, so outputs
get the same permissions as any file the user creates (0644 with the usual umask 022).

Every rename goes through :func:`replace_durably`: the temporary file's data reach the disk
before the rename, and the folder's entry after it, so an output that was reported written
survives a power loss (a rename alone may be replayed by the file system before the data it names).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import io as _io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .image import Image


@functools.cache
def process_umask() -> int:
    """The process umask, read once.

    ``os.umask`` can only be read by setting it, which races with threads creating files; Linux
    shows it in ``/proc/self/status``, so that is tried first.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits a new output file gets: ``0666 & ~umask``."""
    return 0o666 & ~process_umask()


def _unwritable(folder: Path, exc: OSError) -> MedshotError:
    return MedshotError(f"cannot write to this output folder ({exc.strerror or exc})", folder)


def make_output_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and parents); one-line error when it is a file or cannot be created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MedshotError("output path exists and is not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    return folder


def temporary_beside(final: Path) -> Path:
    """A new, empty ``.NAME.XXXXXXXX.part`` file beside ``final`` with the umask's permissions."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except OSError as exc:
        raise _unwritable(final.parent, exc) from exc
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # POSIX flushes a file's data through any descriptor of it
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries; skipped where the platform refuses to open or sync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(pairs: Sequence[tuple[Path, Path]]) -> list[Path]:
    """Rename each complete ``(temporary, final)`` file into place so that it survives a power loss.

    Every atomic write in medshot ends here: each temporary file's data are flushed to disk first,
    then all are renamed, then each folder holding one is flushed so that the renames are on disk.

    Returns
    -------
    list of Path
        The final paths, in order.
    """
    for tmp, _ in pairs:
        _fsync_file(tmp)
    for tmp, final in pairs:
        os.replace(tmp, final)
    for folder in dict.fromkeys(Path(final).parent for _, final in pairs):
        _fsync_folder(folder)
    return [Path(final) for _, final in pairs]


def write_bytes_atomic(final: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` through a temporary file and a durable rename."""
    final = Path(final)
    tmp = temporary_beside(final)
    try:
        tmp.write_bytes(data)
        replace_durably([(tmp, final)])
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return final


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
        make_output_dir(self.out_dir)
        return self

    def path_for(self, name: str) -> Path:
        final = self.out_dir / name
        if final.resolve() in self._protect:
            raise MedshotError("refusing to overwrite an input file; choose another --out", final)
        tmp = temporary_beside(final)
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        done = replace_durably(self._pending)
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
    with OutputSet(final.parent) as outputs:
        yield outputs.path_for(final.name)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """:func:`write_csv`, atomically (a reader sees the old table or the new one, never half of it)."""
    write_text_atomic(path, csv_text(header, rows))
    return Path(path)


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a table to ``path`` as it is: for temporary paths (:class:`OutputSet`); else :func:`write_csv_atomic`."""
    Path(path).write_text(csv_text(header, rows))


# ------------------------------------------------------------------------------------------------
# Encoders: image files as bytes, so that a worker process can make them and the parent commit them.
# ------------------------------------------------------------------------------------------------


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a uint8 (gray or RGB) or uint16 (gray) array."""
    from PIL import Image as PILImage

    buf = _io.BytesIO()
    PILImage.fromarray(np.asarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, array: np.ndarray) -> None:
    Path(path).write_bytes(png_bytes(array))


def nifti_gz_bytes(img) -> bytes:
    """A nibabel image, gzip-compressed with a fixed header time so equal data give equal bytes."""
    buf = _io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:
        fh.write(img.to_bytes())
    return buf.getvalue()


def save_nifti_gz(path: Path, img) -> None:
    """Write a nibabel image gzip-compressed whatever ``path`` ends in (temporary names end in .part)."""
    Path(path).write_bytes(nifti_gz_bytes(img))


def label_dtype(labels: np.ndarray) -> type:
    """uint8 when every label fits, else uint16 (labels go up to 65535)."""
    top = int(np.max(labels)) if np.size(labels) else 0
    return np.uint8 if top < 256 else np.uint16


def file_label_values(labels: np.ndarray, values: dict[int, int] | None) -> np.ndarray:
    """Internal labels -> the values the template's mask file used (e.g. 1 -> 255 for a 0/255 mask)."""
    labels = np.asarray(labels)
    if not values:
        return labels
    out = labels.astype(np.int64)
    for internal, value in values.items():
        out[labels == internal] = value
    return out


def label_map_bytes(labels: np.ndarray, like: Image) -> bytes:
    """A label map on ``like``'s grid, in ``like``'s own file geometry.

    A NIfTI image or volume or a DICOM series gives ``.nii.gz`` with the source's affine, shape and
    orientation (a slice of a 3D NIfTI is written into an otherwise empty volume of its shape); a
    raster or DICOM file gives PNG, 16-bit past label 255.
    """
    labels = np.asarray(labels)
    dtype = label_dtype(labels)
    source = like.source
    if like.kind in ("nifti", "dicom") and (like.ndim == 3 or source is not None):
        import nibabel as nib

        affine = source.affine if source is not None else like.affine
        if like.ndim == 2 and source.slice_index is not None:
            data = np.zeros(source.shape[:3], dtype=dtype)
            index: list = [slice(None)] * 3
            index[2 if source.slice_axis is None else source.slice_axis] = source.slice_index
            data[tuple(index)] = labels
        else:
            data = like.to_source_array(labels.astype(dtype, copy=False))
            if like.ndim == 2:
                data = data.reshape(source.shape)
        img = nib.Nifti1Image(data, affine)
        # Keep the source's codes (scanner vs aligned space); a DICOM-derived target is scanner space.
        img.set_qform(affine, code=int(like.meta.get("qform_code", 1) or 1))
        img.set_sform(affine, code=int(like.meta.get("sform_code", 1) or 1))
        img.header.set_data_dtype(dtype)
        return nifti_gz_bytes(img)
    return png_bytes(labels.astype(dtype))


def save_label_map(path: Path, labels: np.ndarray, like: Image) -> None:
    """Write a label map in the geometry of ``like`` (see :func:`label_map_bytes`), atomically."""
    write_bytes_atomic(path, label_map_bytes(labels, like))


def mask_suffix(image: Image) -> str:
    """``_mask.nii.gz`` where the label map is written as NIfTI, ``_mask.png`` otherwise."""
    nifti = image.kind in ("nifti", "dicom") and (image.ndim == 3 or image.source is not None)
    return "_mask.nii.gz" if nifti else "_mask.png"
