"""Promptable segmenters behind one interface, by name."""

from .base import Prompt, Segmentation, Segmenter, box_from_mask, box_from_points
from .catalogue import (
    check_segmenter,
    get_segmenter,
    register_segmenter,
    segmenter_checkpoint,
    segmenter_names,
    segmenter_status,
)

__all__ = [
    "Prompt", "Segmentation", "Segmenter", "box_from_mask", "box_from_points", "check_segmenter", "get_segmenter",
    "register_segmenter", "segmenter_checkpoint", "segmenter_names", "segmenter_status",
]
