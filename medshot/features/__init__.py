"""Dense features: one interface (image in, :class:`FeatureMap` out) and a registry of backbones."""

from .base import Backbone, FeatureMap, l2_normalize
from .catalogue import BackboneEntry, backbone_entries, backbone_names, get_backbone, register_backbone

__all__ = [
    "Backbone", "BackboneEntry", "FeatureMap", "backbone_entries", "backbone_names", "get_backbone",
    "l2_normalize", "register_backbone",
]
