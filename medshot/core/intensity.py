"""Intensities to [0, 1]: a fixed window (e.g. CT Hounsfield units) or robust percentiles per image."""

from __future__ import annotations

import numpy as np

from .errors import MedshotError

# Percentiles are taken on at most this many samples: exact for 2D images, a regular subsample of a
# large volume (a CT has tens of millions of voxels; the range does not need them all).
PERCENTILE_SAMPLES = 2_000_000


def check_window(window, where=None) -> tuple[float, float] | None:
    """``window`` as ``(low, high)`` floats (None stays None); a one-line :class:`MedshotError` unless low < high."""
    if window is None:
        return None
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise MedshotError(f"an intensity window is two numbers, low and high; got {window!r}", where) from exc
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise MedshotError(f"intensity window must have low < high, got {low:g} {high:g}", where)
    return low, high


def intensity_range(array: np.ndarray, window: tuple[float, float] | None = None,
                    percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """The raw intensities that map to 0 and 1: ``window``, or robust percentiles of ``array``."""
    if window is not None:
        return float(window[0]), float(window[1])
    flat = np.asarray(array, np.float32).reshape(-1)
    flat = flat[:: max(1, flat.size // PERCENTILE_SAMPLES)]
    lo, hi = np.percentile(flat, percentiles)
    if hi - lo < 1e-6:
        lo, hi = float(flat.min()), float(flat.max())
    return float(lo), float(hi)


def apply_range(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Intensities mapped linearly to [0, 1] by ``value_range`` and clipped (zeros for an empty range)."""
    lo, hi = value_range
    if hi - lo < 1e-6:
        return np.zeros(np.shape(array), np.float32)
    # in place on one new float32 array: a CT-sized volume then costs one copy, not four temporaries
    out = np.subtract(array, np.float32(lo), dtype=np.float32)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_intensity(array: np.ndarray, window: tuple[float, float] | None = None,
                        percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map intensities to [0, 1].

    With ``window=(low, high)`` (e.g. a CT HU window such as ``(-160, 240)``) values are clipped to it;
    otherwise robust percentiles of the image set the range, so scanners and bit depths agree.
    """
    return apply_range(array, intensity_range(array, window, percentiles))
