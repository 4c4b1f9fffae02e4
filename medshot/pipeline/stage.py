"""A template or a target on one working grid: what a correspondence is computed between."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.image import Image
from ..features import FeatureMap
from ..match.correspond import TemplateSide
from .evidence import Evidence
from .grids import WorkGrid


@dataclass
class Stage:
    """The template on one working grid: its image, descriptors and everything targets are matched with."""

    grid: WorkGrid
    work: np.ndarray
    fmap: FeatureMap | None
    features: np.ndarray
    side: TemplateSide
    evidence: Evidence


@dataclass
class Prepared:
    """A target on one stage's working grid."""

    image: Image
    grid: WorkGrid
    work: np.ndarray
    fmap: FeatureMap | None
    features: np.ndarray
