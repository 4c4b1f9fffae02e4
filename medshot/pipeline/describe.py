"""A backbone's descriptors as the correspondence uses them, for 2D images and volumes alike.

The template fixes a small PCA basis; every map (template, targets, the template resampled into a
candidate's frame) is projected on it and brought to the working grid as unit descriptors. A 2D
backbone describes a volume slice by slice (:mod:`medshot.features.slices`).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import MedshotError
from ..core.geometry import l2_normalize, pca_basis, project, resize_features, resize_image
from ..features import Backbone, FeatureMap
from ..features.classical import classical_features
from ..features.slices import slice_features


class Descriptors:
    """Descriptors of one backbone with a basis fitted on the template.

    Parameters
    ----------
    backbone : Backbone
    reduced_dims : int
        Dimensions kept by PCA on the template.
    slice_side : int
        Volumes and 2D backbones: longest side each slice is shown to the backbone at.
    """

    def __init__(self, backbone: Backbone, reduced_dims: int, slice_side: int = 224):
        self.backbone = backbone
        self.reduced_dims = reduced_dims
        self.slice_side = slice_side
        # A pixel-level backbone (the classical one) describes whatever grid it is given at that grid's
        # scale, and images of any dimension: the search describes coarse images directly.
        self.pixel_level = bool(getattr(backbone, "pixel_level", False))
        self.full_resolution = bool(getattr(backbone, "full_resolution_input", False))
        self.basis: np.ndarray | None = None

    def backbone_map(self, image: np.ndarray) -> FeatureMap:
        fmap = self.backbone(image)
        if tuple(fmap.image_shape) != tuple(image.shape):
            raise MedshotError(f"backbone '{getattr(self.backbone, 'name', '?')}' described a {fmap.image_shape} "
                               f"image but was given {image.shape}")
        return fmap

    def reduce(self, fmap: FeatureMap, shape: tuple[int, ...]) -> np.ndarray:
        """Unit descriptors ``(c, *shape)`` of a map described in a frame of ``shape`` pixels."""
        # Reduce on the backbone's own grid, then resample: a log-binned ViT map has thousands of channels,
        # and bringing those to the working grid first would cost gigabytes.
        reduced = FeatureMap(project(self.basis, fmap.data), fmap.stride, fmap.offset, fmap.image_shape)
        if not (reduced.grid_shape == tuple(shape) and all(s == 1.0 for s in reduced.stride)):
            reduced = reduced.resampled(tuple(shape))
        return l2_normalize(reduced.data, axis=0)

    def prepare(self, work: np.ndarray, full: np.ndarray | None = None,
                fit: bool = False) -> tuple[FeatureMap | None, np.ndarray]:
        """The backbone's own map (2D; None for volumes) and unit descriptors on the working grid.

        ``full`` is the image at full resolution, for a backbone that wants it (SAM's encoder);
        ``fit`` fits the basis (the template).
        """
        if work.ndim == 3 and not self.pixel_level:
            features, basis = slice_features(work, self.backbone, self.reduced_dims,
                                             None if fit else self.basis, self.slice_side)
            if fit:
                self.basis = basis
            return None, features
        given = full if (self.full_resolution and full is not None) else work
        fmap = self.backbone_map(given)
        if fmap.image_shape != work.shape:
            fmap = fmap.rescaled(work.shape)
        if fit:
            self.basis = pca_basis(fmap.data, self.reduced_dims)
        return (fmap if work.ndim == 2 else None), self.reduce(fmap, work.shape)

    def dense(self, image: np.ndarray) -> np.ndarray:
        """Unit descriptors of an image on its own grid (the template resampled into a candidate's frame)."""
        if image.ndim == 3 and not self.pixel_level:
            return slice_features(image, self.backbone, self.reduced_dims, self.basis, self.slice_side)[0]
        return self.reduce(self.backbone_map(image), image.shape)

    def coarse(self, image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Descriptors for the pose search on a grid of ``shape``: computed there for a pixel-level backbone
        (context-sized structure), else the image's dense descriptors resampled."""
        if self.pixel_level:
            return classical_features(resize_image(image, shape))
        return resize_features(self.dense(image), shape)
