"""Every backbone medshot knows, by name: a static table, so listing names imports no model code.

Builders are ``"module:function"`` strings, imported when a backbone is built or its availability is
asked (:mod:`medshot.core.registry`). Weights-needing entries name their default Hugging Face
checkpoint; the builders in :mod:`.foundation` and :mod:`.sam` receive it through ``fixed``.
"""

from __future__ import annotations

from typing import Any

from ..core.registry import Entry, Registry
from ..models.sam import VARIANTS
from .base import Backbone

#: medshot name -> (family, Hugging Face checkpoint, description). Families are those of ``vit.FAMILIES``.
VIT_BACKBONES: dict[str, tuple[str, str, str]] = {
    "dino_vits8": ("dino", "facebook/dino-vits8", "DINO v1 ViT-S/8"),
    "dino_vits16": ("dino", "facebook/dino-vits16", "DINO v1 ViT-S/16"),
    "dino_vitb8": ("dino", "facebook/dino-vitb8", "DINO v1 ViT-B/8"),
    "dino_vitb16": ("dino", "facebook/dino-vitb16", "DINO v1 ViT-B/16"),
    "dinov2_vits14": ("dinov2", "facebook/dinov2-small", "DINOv2 ViT-S/14"),
    "dinov2_vitb14": ("dinov2", "facebook/dinov2-base", "DINOv2 ViT-B/14"),
    "dinov2_vitl14": ("dinov2", "facebook/dinov2-large", "DINOv2 ViT-L/14"),
    "dinov2_vitg14": ("dinov2", "facebook/dinov2-giant", "DINOv2 ViT-g/14"),
    "dinov2_vits14_reg": ("dinov2_reg", "facebook/dinov2-with-registers-small", "DINOv2 ViT-S/14 + registers"),
    "dinov2_vitb14_reg": ("dinov2_reg", "facebook/dinov2-with-registers-base", "DINOv2 ViT-B/14 + registers"),
    "dinov2_vitl14_reg": ("dinov2_reg", "facebook/dinov2-with-registers-large", "DINOv2 ViT-L/14 + registers"),
    "dinov2_vitg14_reg": ("dinov2_reg", "facebook/dinov2-with-registers-giant", "DINOv2 ViT-g/14 + registers"),
    "dinov3_vits16": ("dinov3", "facebook/dinov3-vits16-pretrain-lvd1689m", "DINOv3 ViT-S/16"),
    "dinov3_vits16plus": ("dinov3", "facebook/dinov3-vits16plus-pretrain-lvd1689m", "DINOv3 ViT-S+/16"),
    "dinov3_vitb16": ("dinov3", "facebook/dinov3-vitb16-pretrain-lvd1689m", "DINOv3 ViT-B/16"),
    "dinov3_vitl16": ("dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m", "DINOv3 ViT-L/16"),
    "dinov3_vith16plus": ("dinov3", "facebook/dinov3-vith16plus-pretrain-lvd1689m", "DINOv3 ViT-H+/16"),
    "dinov3_vit7b16": ("dinov3", "facebook/dinov3-vit7b16-pretrain-lvd1689m", "DINOv3 ViT-7B/16"),
    "clip_vitb16": ("clip", "openai/clip-vit-base-patch16", "CLIP ViT-B/16 vision tower"),
    "clip_vitl14": ("clip", "openai/clip-vit-large-patch14", "CLIP ViT-L/14 vision tower"),
}

#: medshot name -> (Hugging Face checkpoint, description).
SD_BACKBONES: dict[str, tuple[str, str]] = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5 UNet, DIFT features"),
    "sd21": ("stabilityai/stable-diffusion-2-1", "Stable Diffusion 2.1 UNet, DIFT features"),
}

#: The SAM image encoders offered as backbones (the segmenter catalogue offers every SAM variant).
SAM_BACKBONES = ("sam_vit_b", "sam_vit_l", "sam_vit_h")


def _entries() -> list[Entry]:
    entries = [Entry("classical", "medshot.features.classical:ClassicalBackbone", family="weights-free",
                     description="multi-scale Gaussian-derivative jets + MIND self-similarity (no weights needed)")]
    for name, (family, repo, description) in VIT_BACKBONES.items():
        entries.append(Entry(name, "medshot.features.foundation:build_vit", family=family, description=description,
                             checkpoint=repo, availability="medshot.features.foundation:vit_status",
                             fixed={"name": name, "family": family, "repo_id": repo}))
    for name, (repo, description) in SD_BACKBONES.items():
        entries.append(Entry(name, "medshot.features.foundation:build_sd", family="sd", description=description,
                             checkpoint=repo, availability="medshot.features.foundation:sd_status",
                             fixed={"name": name, "repo_id": repo}))
    for name in SAM_BACKBONES:
        entries.append(Entry(
            name, "medshot.features.sam:SamBackbone", family="sam",
            description=f"{VARIANTS[name].description}: image-encoder neck, 256 channels at stride 16 of a 1024 "
                        f"frame (shares its pass with --segmenter {name})",
            checkpoint=VARIANTS[name].repo_id, availability="medshot.models.sam:availability", fixed={"name": name}))
    return entries


#: The backbone registry. Options are checked against each builder's signature.
BACKBONES = Registry("backbone", _entries(), check_options=True)

#: Kept as the historical name of a backbone's registry entry.
BackboneEntry = Entry


def register_backbone(entry: Entry) -> None:
    """Add a backbone (e.g. a user's own) under ``entry.name``."""
    BACKBONES.register(entry)


def backbone_names() -> list[str]:
    """Every registered backbone name, weights-free ``classical`` first."""
    return BACKBONES.names()


def backbone_entries() -> list[Entry]:
    """Every registered backbone's entry (name, family, description, checkpoint, ``available()``)."""
    return BACKBONES.entries()


def get_backbone(name: str, **options: Any) -> Backbone:
    """Build the backbone called ``name`` with its options (e.g. ``layer``, ``facet``, ``stride``).

    Raises
    ------
    MedshotError
        For an unknown name or an option the backbone does not take.
    """
    return BACKBONES.build(name, **options)
