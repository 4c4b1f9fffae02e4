"""Geometry shared by every correspondence step, written for arrays of any dimension.

Conventions (as in scikit-image's ``registration`` module): an image is ``(M, N[, P])``; a point
is its array index ``(row, col[, slice])`` as floats, the centre of the first pixel at 0; a
coordinate field is ``(ndim, M, N[, P])`` and holds, for each pixel of one grid, a position on
another; an affine is a ``(ndim + 1, ndim + 1)`` matrix acting on such points.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage


def l2_normalize(data: np.ndarray, axis: int = 0, eps: float = 1e-8) -> np.ndarray:
    """Unit-length descriptors along ``axis`` (so dot products are cosine similarities)."""
    norm = np.sqrt(np.sum(data * data, axis=axis, keepdims=True))
    return (data / np.maximum(norm, eps)).astype(np.float32)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, ndim)`` points mapped by a ``(ndim + 1, ndim + 1)`` affine."""
    d = matrix.shape[0] - 1
    p = np.asarray(points, dtype=np.float64).reshape(-1, d)
    return p @ matrix[:d, :d].T + matrix[:d, d]


def radiological(array: np.ndarray) -> np.ndarray:
    """A canonical (RAS+) slice or volume in the radiological layout (a view, not a copy).

    ``(X, Y)`` -> ``(Y, X)`` and ``(X, Y, Z)`` -> ``(Z, Y, X)``, with Y and X reversed: anterior (or
    superior) up and the patient's right on the image's left, as scanners' viewers show it.
    """
    return np.asarray(array).T[..., ::-1, ::-1]


def from_radiological(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`radiological` (a view, not a copy)."""
    return np.asarray(array)[..., ::-1, ::-1].T


def scale_matrix(factors) -> np.ndarray:
    """Resampling by ``factors`` per axis that keeps pixel centres: ``u' = (u + 0.5) f - 0.5``."""
    f = np.atleast_1d(np.asarray(factors, dtype=np.float64))
    M = np.eye(len(f) + 1)
    M[:-1, :-1] = np.diag(f)
    M[:-1, -1] = 0.5 * f - 0.5
    return M


def rotation_2d(angle_deg: float, scale: float = 1.0, center=(0.0, 0.0)) -> np.ndarray:
    """``(3, 3)`` rotation by ``angle_deg`` and isotropic ``scale`` about ``center`` (row, col)."""
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    L = np.array([[c, -s], [s, c]])
    M = np.eye(3)
    M[:2, :2] = L
    M[:2, 2] = np.asarray(center, float) - L @ np.asarray(center, float)
    return M


def grid_coords(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(ndim, *shape)`` positions ``matrix @ u`` of every index ``u`` of a grid of ``shape``."""
    d = len(shape)
    grid = np.indices(shape, dtype=np.float64).reshape(d, -1)
    out = matrix[:d, :d] @ grid + matrix[:d, d:d + 1]
    return out.reshape((d, *shape))


def inside(coords: np.ndarray, shape: tuple[int, ...], margin: float = 0.5) -> np.ndarray:
    """Which positions of a field fall within a grid of ``shape`` (pixel edges included)."""
    ok = np.ones(coords.shape[1:], bool)
    for axis, n in enumerate(shape):
        ok &= (coords[axis] >= -margin) & (coords[axis] <= n - 1 + margin)
    return ok


def level_shape(shape: tuple[int, ...], side: int, upsample: bool = False) -> tuple[tuple[int, ...], float]:
    """A grid whose longest side is ``side`` (never larger than ``shape`` unless ``upsample``), and its factor."""
    f = side / max(shape)
    if not upsample:
        f = min(f, 1.0)
    return tuple(max(4, int(round(n * f))) for n in shape), f


def resize_image(image: np.ndarray, shape: tuple[int, ...], box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Linear resampling of ``image`` (or of its ``box``) onto a grid of ``shape`` covering the same extent.

    Smoothed first along every axis that shrinks; sampled one axis at a time (cheap for large volumes:
    no full-size coordinate arrays), the most shrinking axis first.
    """
    image = np.asarray(image if box is None else image[box], np.float32)
    if tuple(image.shape) == tuple(shape):
        return image
    return sample_grid(image, shape, np.array(shape, float) / np.array(image.shape, float))


def sample_grid(image: np.ndarray, shape: tuple[int, ...], factor, origin=None, transform=None) -> np.ndarray:
    """``image`` on a grid of ``shape`` whose index ``w`` lies at image index ``(w + 0.5) / factor - 0.5 + origin``.

    Parameters
    ----------
    image : ndarray ``(M, N[, P])``
    shape : tuple of int
        The grid's shape (it may reach past the image: edge values are repeated there).
    factor : array_like ``(ndim,)``
        Grid points per image pixel along each axis; axes that shrink (``factor < 1``) are smoothed
        first (Gaussian of ``0.5 / factor - 0.5`` pixels).
    origin : array_like ``(ndim,)``, optional
        Image index of the grid's first point's lower edge (fractional allowed; default 0).
    transform : callable, optional
        Applied to the part of ``image`` that is read before smoothing (e.g. an intensity window), so a
        large volume is never transformed whole.

    Only the part of ``image`` the grid covers, plus the smoothing's reach, is read: a box of a large
    volume costs the box.
    """
    d = len(shape)
    f = np.asarray(factor, float).reshape(d)
    o = np.zeros(d) if origin is None else np.asarray(origin, float).reshape(d)
    sigma = np.array([max(0.0, 0.5 / fa - 0.5) if fa < 1 else 0.0 for fa in f])
    coords = [(np.arange(n) + 0.5) / fa - 0.5 + oa for n, fa, oa in zip(shape, f, o)]
    reach = np.ceil(4 * sigma) + 1
    lo = np.clip([int(np.floor(c.min() - r)) for c, r in zip(coords, reach)], 0, np.array(image.shape) - 1)
    hi = np.clip([int(np.ceil(c.max() + r)) + 1 for c, r in zip(coords, reach)], lo + 1, np.array(image.shape))
    sub = np.asarray(image[tuple(slice(a, b) for a, b in zip(lo, hi))], np.float32)
    if transform is not None:
        sub = np.asarray(transform(sub), np.float32)
    if sigma.any():
        sub = ndimage.gaussian_filter(sub, list(sigma), mode="nearest")
    out = sub
    for axis in np.argsort(f):
        c = np.clip(coords[axis] - lo[axis], 0, sub.shape[axis] - 1)
        a = np.minimum(np.floor(c).astype(np.intp), max(sub.shape[axis] - 2, 0))
        b = np.minimum(a + 1, sub.shape[axis] - 1)
        w = (c - a).astype(np.float32).reshape([-1 if k == axis else 1 for k in range(sub.ndim)])
        out = np.take(out, a, axis=axis) * (1 - w) + np.take(out, b, axis=axis) * w
    return out.astype(np.float32)


def resize_features(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(C, *grid)`` descriptors resampled onto ``shape`` (smoothed when shrinking), unit length again."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data
    f = np.array(shape, float) / np.array(data.shape[1:], float)
    sigma = [0.0] + [max(0.0, 0.5 / fa - 0.5) if fa < 1 else 0.0 for fa in f]
    if any(sigma):
        data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    coords = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / fa - 0.5 for n, fa in zip(shape, f)], indexing="ij"))
    return l2_normalize(warp_channels(data, coords), axis=0)


def warp_channels(data: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linear samples of every channel of ``(C, *grid)`` at ``coords`` ``(ndim, *out)`` (edges clamped).

    One gather for all channels: several times faster than a ``map_coordinates`` call per channel.
    """
    C = data.shape[0]
    grid = data.shape[1:]
    d = len(grid)
    out_shape = coords.shape[1:]
    flat = data.reshape(C, -1)
    strides = np.cumprod((1,) + grid[::-1])[:-1][::-1]
    base = np.zeros(int(np.prod(out_shape)), np.intp)
    frac = []
    for axis in range(d):
        c = np.clip(coords[axis].ravel(), 0, grid[axis] - 1)
        lo = np.minimum(np.floor(c).astype(np.intp), max(grid[axis] - 2, 0))
        base += lo * strides[axis]
        frac.append((c - lo).astype(np.float32))
    out = np.zeros((C, base.size), np.float32)
    for corner in range(1 << d):
        weight = np.ones(base.size, np.float32)
        offset = 0
        for axis in range(d):
            bit = (corner >> axis) & 1
            weight *= frac[axis] if bit else 1 - frac[axis]
            if bit and grid[axis] > 1:
                offset += strides[axis]
        out += flat[:, base + offset] * weight
    return out.reshape((C, *out_shape))


def warp_image(image: np.ndarray, coords: np.ndarray, order: int = 1, cval: float | None = None) -> np.ndarray:
    """An image sampled at ``coords`` ``(ndim, *out)``; outside it the nearest edge value, or ``cval``."""
    mode = "nearest" if cval is None else "constant"
    return ndimage.map_coordinates(np.asarray(image, np.float32), coords, order=order, mode=mode,
                                   cval=0.0 if cval is None else cval).astype(np.float32)


def fft_size(n: int) -> int:
    """A fast real-FFT length of at least ``n``."""
    return sfft.next_fast_len(int(n), real=True)


def resample_field(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A ``(ndim, *grid)`` field's values linearly resampled onto a grid of ``shape`` over the same extent."""
    grid = field.shape[1:]
    if tuple(grid) == tuple(shape):
        return field
    coords = np.stack(np.meshgrid(*[np.clip((np.arange(n) + 0.5) * g / n - 0.5, 0, g - 1)
                                    for n, g in zip(shape, grid)], indexing="ij"))
    return warp_channels(field.astype(np.float32), coords).astype(np.float64)


def informativeness(features: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Weight in [0, 1] per pixel: how much the unit descriptors vary around it.

    Flat regions (air around a patient, the black outside an ultrasound fan, padding) all carry one
    and the same descriptor, so they would match each other perfectly and swamp a search; the length
    of the locally averaged unit descriptor is 1 there and smaller where there is structure.
    """
    mean = ndimage.gaussian_filter(features, [0] + [sigma] * (features.ndim - 1), mode="nearest")
    spread = 1.0 - np.sqrt((mean * mean).sum(0))
    ref = float(np.percentile(spread, 75))
    return np.clip(spread / max(ref, 1e-6), 0.0, 1.0).astype(np.float32)


def pca_basis(data: np.ndarray, channels: int) -> np.ndarray | None:
    """``(channels, C)`` principal axes of ``(C, *grid)`` descriptors (None when C <= channels)."""
    C = data.shape[0]
    if C <= channels or channels <= 0:
        return None
    x = data.reshape(C, -1)
    x = x[:, :: max(1, x.shape[1] // 20000)]
    x = x - x.mean(axis=1, keepdims=True)
    u = np.linalg.svd(x @ x.T)[0]
    return u[:, :channels].T.astype(np.float32)


def project(basis: np.ndarray | None, data: np.ndarray) -> np.ndarray:
    """``(C, *grid)`` descriptors on ``basis`` (``(k, C)``), unit length; unchanged length when None."""
    if basis is None:
        return l2_normalize(data, axis=0)
    # einsum, not BLAS: BLAS thread start-up costs more than these small products on this hardware.
    out = np.einsum("kc,cp->kp", basis, data.reshape(data.shape[0], -1)).reshape((basis.shape[0], *data.shape[1:]))
    return l2_normalize(out, axis=0)
