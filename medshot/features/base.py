"""The one interface every backbone implements: image in, :class:`FeatureMap` (features + pixel mapping) out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..core.feature_map import FeatureMap
from ..core.geometry import l2_normalize

__all__ = ["Backbone", "FeatureMap", "l2_normalize"]


class Backbone(Protocol):
    """What the registry hands out: a callable from an image to its :class:`FeatureMap`.

    A backbone may set ``full_resolution_input = True``: it is then given the target at its own
    resolution (not the matching grid), e.g. so a SAM encoder pass can be shared with the SAM
    segmenter, which sees the same full-resolution image.
    """

    name: str

    def __call__(self, image: np.ndarray) -> FeatureMap:
        """``image``: gray ``(M, N)`` float32 in [0, 1] (a pixel-level backbone may also take a volume,
        ``(M, N, P)``); returns its features."""
        ...
