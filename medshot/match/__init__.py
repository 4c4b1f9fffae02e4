"""Correspondence between template and target: dense alignment and point matches."""

from .align import AlignOptions, Correspondence, align, apply_affine
from .points import PointMatches, match_points, similarity_maps, subpixel_peak

__all__ = [
    "AlignOptions", "Correspondence", "PointMatches", "align", "apply_affine", "match_points",
    "similarity_maps", "subpixel_peak",
]
