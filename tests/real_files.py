"""The real-file corpus of ``tests/test_real_files.py``: DICOM and NIfTI files shipped inside the installed
pydicom and nibabel packages (never downloaded), and self-templates made from them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from medshot.data.image import Image

LABEL = 1


def pydicom_files() -> Path:
    """pydicom's own test files, as installed (``pydicom.data.get_testdata_files`` would download more)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


def nibabel_files() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


def corpus_roots() -> list[Path]:
    return [pydicom_files(), nibabel_files()]


def fingerprint(image: Image) -> str:
    """Same pixels and geometry -> same fingerprint (one file's encodings: RLE, big endian, JPEG 2000 lossless ...)."""
    h = hashlib.sha1(np.ascontiguousarray(image.array, np.float32).tobytes())
    h.update(np.round(image.affine, 4).tobytes())
    return h.hexdigest()


def structured_spot(array: np.ndarray) -> tuple[int, ...]:
    """The array index where the image is most structured in every direction (the largest smallest
    eigenvalue of the structure tensor, as a corner detector takes), away from the border."""
    a = np.asarray(array, np.float64)
    lo, hi = np.percentile(a, [1, 99])
    a = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
    sigma = max(1.0, min(a.shape) / 64)
    grads = [ndimage.gaussian_filter(a, sigma, order=tuple(int(i == k) for i in range(a.ndim))) for k in range(a.ndim)]
    tensor = np.empty(a.shape + (a.ndim, a.ndim))
    for i in range(a.ndim):
        for j in range(a.ndim):
            tensor[..., i, j] = ndimage.gaussian_filter(grads[i] * grads[j], 2 * sigma)
    weakest = np.linalg.eigvalsh(tensor)[..., 0]
    margin = [max(1, n // 6) if n > 4 else 0 for n in a.shape]
    inner = np.zeros(a.shape, bool)
    inner[tuple(slice(m, n - m) for m, n in zip(margin, a.shape))] = True
    weakest[~inner] = -np.inf
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(weakest)), a.shape))


def box_mask(shape: tuple[int, ...], centre: tuple[int, ...]) -> np.ndarray:
    """A box around ``centre``, a third of the image along each axis (at least 3 pixels), label 1."""
    mask = np.zeros(shape, np.uint8)
    half = [max(1, n // 6) for n in shape]
    mask[tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape))] = LABEL
    return mask


def centre(shape: tuple[int, ...]) -> tuple[float, ...]:
    return tuple((n - 1) / 2 for n in shape)
