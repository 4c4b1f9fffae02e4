"""medshot: one-shot localization and segmentation of medical images.

Annotate one template image; find the same landmarks and structures in new images::

    shot = medshot.OneShot(medshot.Template.load("template.json"))
    result = shot.run("target.png")
    result.landmarks, result.label_map
"""

from .core.errors import MedshotError, WeightsNotFoundError
from .features import FeatureMap, backbone_names, get_backbone
from .io import Image2D, load_image, normalize_intensity
from .pipeline import LandmarkResult, OneShot, TargetResult
from .segment import get_segmenter, segmenter_names
from .template import Landmark, PromptPoints, Template

__version__ = "0.1.0"

__all__ = [
    "FeatureMap", "Image2D", "Landmark", "LandmarkResult", "MedshotError", "OneShot", "PromptPoints",
    "TargetResult", "Template", "WeightsNotFoundError", "backbone_names", "get_backbone", "get_segmenter",
    "load_image", "normalize_intensity", "segmenter_names",
]
