"""Correspondence between template and target: pose search, verification, refinement, point matches."""

from .correspond import Candidate, Correspondence, CorrespondOptions, TemplateSide, correspond
from .points import PointMatches, match_points, similarity_maps, subpixel_peak
from .refine import RefineOptions
from .search import SearchOptions
from .verify import Verification, Verifier

__all__ = [
    "Candidate", "CorrespondOptions", "Correspondence", "PointMatches", "RefineOptions", "SearchOptions",
    "TemplateSide", "Verification", "Verifier", "correspond", "match_points", "similarity_maps", "subpixel_peak",
]
