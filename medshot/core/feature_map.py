"""A dense feature map and the mapping of its grid onto the pixels of the image it describes.

Every backbone returns one (:mod:`medshot.features`); the correspondence and the landmark
matching read descriptors off it (:mod:`medshot.match`), so it lives below both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class FeatureMap:
    """Dense features of one image (or volume) and how their grid maps onto its pixels.

    Attributes
    ----------
    data : ndarray, shape (C, m, n[, p]), float32
        One descriptor per grid cell.
    stride : tuple of float
        Input-image pixels between neighbouring cells, per array axis.
    offset : tuple of float
        Input-image pixel position (array order) of the centre of cell ``(0, 0[, 0])``.
    image_shape : tuple of int
        Shape ``(M, N[, P])`` of the image the features describe.

    Cell ``(i, j[, k])`` sits at pixel ``offset + (i, j[, k]) * stride``; points are array order
    (row, col[, slice]) throughout.
    """

    data: np.ndarray
    stride: tuple[float, ...]
    offset: tuple[float, ...]
    image_shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def ndim(self) -> int:
        return self.data.ndim - 1

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape[1:])

    def pixel_to_grid(self, points: np.ndarray) -> np.ndarray:
        """Image pixels ``(N, ndim)`` -> fractional grid positions (both array order)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, self.ndim)
        return (p - np.asarray(self.offset)) / np.asarray(self.stride)

    def grid_to_pixel(self, grid: np.ndarray) -> np.ndarray:
        g = np.asarray(grid, dtype=np.float64).reshape(-1, self.ndim)
        return g * np.asarray(self.stride) + np.asarray(self.offset)

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Linearly interpolated descriptors at image pixels ``(N, ndim)``: ``(N, C)``."""
        g = self.pixel_to_grid(points).T
        return np.stack([ndimage.map_coordinates(ch, g, order=1, mode="nearest") for ch in self.data],
                        axis=1).astype(np.float32)

    def resampled(self, shape: tuple[int, ...]) -> FeatureMap:
        """Features linearly resampled onto a pixel grid of ``shape`` covering the image.

        Used to bring features to pixel level (``shape == image_shape``) or to a working grid.
        """
        steps = np.array(self.image_shape, float) / np.array(shape, float)
        axes = [((np.arange(n) + 0.5) * st - 0.5 - o) / sd
                for n, st, o, sd in zip(shape, steps, self.offset, self.stride)]
        coords = np.stack(np.meshgrid(*axes, indexing="ij"))
        out = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in self.data])
        return FeatureMap(out.astype(np.float32), tuple(float(x) for x in steps),
                          tuple(float((x - 1) / 2) for x in steps), self.image_shape)

    def rescaled(self, image_shape: tuple[int, ...]) -> FeatureMap:
        """The same features described in the pixel frame of the image resized to ``image_shape``."""
        f = np.array(image_shape, float) / np.array(self.image_shape, float)
        return FeatureMap(self.data, tuple(float(x) for x in np.array(self.stride) * f),
                          tuple(float(x) for x in (np.array(self.offset) + 0.5) * f - 0.5), tuple(image_shape))
