"""medshot: one-shot localization and segmentation of medical images and volumes.

Annotate one template image or volume; find the same landmarks and structures in new ones::

    shot = medshot.OneShot(medshot.Template.load("template.json"))
    result = shot.run("target.png")            # or a NIfTI volume, a DICOM series folder
    result.landmarks, result.label_map

Points are array indices of the image they belong to, in 2D and 3D alike (see
:mod:`medshot.data.image`).
"""

from .core.errors import MedshotError, WeightsNotFoundError
from .core.intensity import normalize_intensity
from .data.annotations import Landmark
from .data.image import Image, from_array
from .data.read import read_image
from .data.template import PromptPoints, Template
from .features import FeatureMap, backbone_names, get_backbone
from .pipeline import Ensemble, LandmarkResult, OneShot, TargetResult
from .segment import get_segmenter, segmenter_names

__version__ = "0.1.0"

__all__ = [
    "Ensemble", "FeatureMap", "Image", "Landmark", "LandmarkResult", "MedshotError", "OneShot", "PromptPoints",
    "TargetResult", "Template", "WeightsNotFoundError", "backbone_names", "from_array", "get_backbone",
    "get_segmenter", "normalize_intensity", "read_image", "segmenter_names",
]
