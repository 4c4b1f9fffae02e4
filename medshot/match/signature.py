"""A cheap whole-image signature: which images look alike, before any matching.

Batch mode orders its targets by it (pseudo-templates most like a target, outliers far from the
template). As a way to shortlist templates for ``top_k`` it was measured and not adopted: on the tune
half it keeps worse templates than the verified affine on fetal head and cardiac MR
(``benchmarks/top_k_choice.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.intensity import apply_range, intensity_range
from ..data.image import Image


def image_signature(image: Image, window: tuple[float, float] | None = None, side: int = 64,
                    keep: int = 12) -> np.ndarray:
    """A cheap whole-image signature for finding similar images: the low frequencies of the magnitude
    spectrum of a ``side``-pixel thumbnail (blind to where the anatomy sits in the field of view).

    Returns
    -------
    ndarray (keep ** ndim,) float
        Zero mean, unit norm.
    """
    normalized = apply_range(image.array, intensity_range(image.array, window))  # float32
    thumb = ndimage.zoom(normalized, [side / n for n in normalized.shape], order=1, grid_mode=True, mode="nearest")
    spectrum = np.abs(np.fft.fftn(thumb - thumb.mean()))
    low = np.fft.fftshift(spectrum)[tuple(slice(s // 2 - keep // 2, s // 2 + keep // 2) for s in spectrum.shape)]
    signature = np.log1p(low).ravel()
    signature -= signature.mean()
    return signature / max(float(np.linalg.norm(signature)), 1e-12)
