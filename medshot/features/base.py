"""The one interface every backbone implements: image in, feature map + its pixel mapping out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage


@dataclass
class FeatureMap:
    """Dense features of one image and how their grid maps onto the image's pixels.

    Attributes
    ----------
    data : ndarray, shape (C, h, w), float32
        One descriptor per grid cell.
    stride_yx : (float, float)
        Input-image pixels between neighbouring cells along y and x.
    offset_yx : (float, float)
        Input-image pixel coordinate (y, x) of the centre of cell (0, 0).
    image_shape : (int, int)
        ``(H, W)`` of the image the features describe.

    Cell ``(i, j)`` sits at pixel ``(offset_y + i * stride_y, offset_x + j * stride_x)``.
    """

    data: np.ndarray
    stride_yx: tuple[float, float]
    offset_yx: tuple[float, float]
    image_shape: tuple[int, int]

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    def pixel_to_grid(self, points_xy: np.ndarray) -> np.ndarray:
        """Image pixel ``(x, y)`` -> fractional grid ``(x, y)``."""
        p = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([(p[:, 0] - self.offset_yx[1]) / self.stride_yx[1],
                         (p[:, 1] - self.offset_yx[0]) / self.stride_yx[0]], axis=1)

    def grid_to_pixel(self, grid_xy: np.ndarray) -> np.ndarray:
        g = np.asarray(grid_xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([g[:, 0] * self.stride_yx[1] + self.offset_yx[1],
                         g[:, 1] * self.stride_yx[0] + self.offset_yx[0]], axis=1)

    def sample(self, points_xy: np.ndarray) -> np.ndarray:
        """Bilinearly interpolated descriptors at image pixels ``(x, y)``: ``(N, C)``."""
        g = self.pixel_to_grid(points_xy)
        coords = np.stack([g[:, 1], g[:, 0]])
        return np.stack(
            [ndimage.map_coordinates(ch, coords, order=1, mode="nearest") for ch in self.data], axis=1
        ).astype(np.float32)

    def resampled(self, shape: tuple[int, int]) -> FeatureMap:
        """Features bilinearly resampled onto a ``shape`` = (H', W') pixel grid covering the image.

        Used to bring features to pixel level (``shape == image_shape``) or to a working grid.
        """
        H, W = self.image_shape
        h, w = shape
        sy, sx = H / h, W / w
        ys = (np.arange(h) + 0.5) * sy - 0.5
        xs = (np.arange(w) + 0.5) * sx - 0.5
        gy = (ys - self.offset_yx[0]) / self.stride_yx[0]
        gx = (xs - self.offset_yx[1]) / self.stride_yx[1]
        out = np.empty((self.channels, h, w), dtype=np.float32)
        yy, xx = np.meshgrid(gy, gx, indexing="ij")
        coords = np.stack([yy, xx])
        for c in range(self.channels):
            out[c] = ndimage.map_coordinates(self.data[c], coords, order=1, mode="nearest")
        return FeatureMap(out, (sy, sx), ((sy - 1) / 2, (sx - 1) / 2), self.image_shape)


    def rescaled(self, image_shape: tuple[int, int]) -> FeatureMap:
        """The same features described in the pixel frame of the image resized to ``image_shape``."""
        H, W = self.image_shape
        fy, fx = image_shape[0] / H, image_shape[1] / W
        return FeatureMap(
            self.data, (self.stride_yx[0] * fy, self.stride_yx[1] * fx),
            ((self.offset_yx[0] + 0.5) * fy - 0.5, (self.offset_yx[1] + 0.5) * fx - 0.5), tuple(image_shape),
        )


class Backbone(Protocol):
    """What the registry hands out: a callable from an image to its :class:`FeatureMap`.

    A backbone may set ``full_resolution_input = True``: it is then given the target at its own
    resolution (not the matching grid), e.g. so a SAM encoder pass can be shared with the SAM
    segmenter, which sees the same full-resolution image.
    """

    name: str

    def __call__(self, image: np.ndarray) -> FeatureMap:
        """``image``: ``(H, W)`` float32 in [0, 1] (gray) or ``(H, W, 3)``; returns its features."""
        ...


def l2_normalize(data: np.ndarray, axis: int = 0, eps: float = 1e-8) -> np.ndarray:
    """Unit-length descriptors along ``axis`` (so dot products are cosine similarities)."""
    norm = np.sqrt(np.sum(data * data, axis=axis, keepdims=True))
    return (data / np.maximum(norm, eps)).astype(np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        return image[..., :3].mean(axis=2)
    return image


def to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]
