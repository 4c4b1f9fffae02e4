"""Registers the foundation-model backbones: DINO v1, DINOv2 (+registers), DINOv3, CLIP and Stable Diffusion.

Importing this module needs neither torch nor transformers: the model code (:mod:`.vit`,
:mod:`.diffusion`) is imported by the factories, and availability checks only look for the packages
and the weights. SAM's names are registered by :mod:`.sam`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from ..errors import MedshotError
from ..weights import weights_present
from .registry import BackboneEntry, register_backbone

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

#: The ``transformers`` module each family's model class lives in (checked without importing torch).
_FAMILY_MODULES = {
    "dino": "transformers.models.vit",
    "dinov2": "transformers.models.dinov2",
    "dinov2_reg": "transformers.models.dinov2_with_registers",
    "dinov3": "transformers.models.dinov3_vit",
    "clip": "transformers.models.clip",
}


def _missing(modules: tuple[str, ...]) -> list[str]:
    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except ModuleNotFoundError:  # the parent package itself is absent
            out.append(m)
    return out


def _availability(repo_id: str, packages: tuple[str, ...], extra: str,
                  model_module: str | None = None) -> Callable[[], tuple[bool, str]]:
    """A no-argument check: packages importable, model class in this transformers, weights in the HF cache."""

    def check() -> tuple[bool, str]:
        missing = _missing(packages)
        if missing:
            return False, f"needs {', '.join(missing)}: pip install 'medshot[{extra}]'"
        if model_module and _missing((model_module,)):
            module = model_module.rsplit(".", 1)[-1]
            return False, f"the installed transformers has no {module}: pip install -U transformers"
        present, where = weights_present(repo_id)
        if present:
            return True, where
        return False, f"{where} (hf download {repo_id}, or --weights DIR)"

    return check


def _vit_factory(name: str, family: str, repo_id: str):
    # Explicit keywords (not **kwargs): the registry checks option names against this signature.
    def factory(weights=None, layer=None, facet="token", stride=None, log_bin=False, image_size=None,
                device=None, dtype=None):
        try:
            from .vit import load_vit
        except ImportError as exc:
            raise MedshotError(f"backbone '{name}' needs torch and transformers ({exc}): "
                               f"pip install 'medshot[torch]'") from exc
        return load_vit(name, family, repo_id, weights=weights, layer=layer, facet=facet, stride=stride,
                        log_bin=log_bin, image_size=image_size, device=device, dtype=dtype)

    factory.__doc__ = f"Build '{name}' ({repo_id}); see medshot.features.vit.ViTBackbone for the options."
    return factory


def _sd_factory(name: str, repo_id: str):
    def factory(weights=None, timestep=261, up_block=1, ensemble=1, prompt="", image_size=None, seed=0,
                log_bin=False, layer=None, device=None, dtype=None):
        # `layer` is accepted as another name for `up_block` so that the CLI's --layer reaches it.
        try:
            from .diffusion import load_diffusion
        except ImportError as exc:
            raise MedshotError(f"backbone '{name}' needs torch, diffusers and transformers ({exc}): "
                               f"pip install 'medshot[sd]'") from exc
        return load_diffusion(name, repo_id, weights=weights, timestep=timestep,
                              up_block=up_block if layer is None else layer, ensemble=ensemble, prompt=prompt,
                              image_size=image_size, seed=seed, log_bin=log_bin, device=device, dtype=dtype)

    factory.__doc__ = f"Build '{name}' ({repo_id}); see medshot.features.diffusion.DiffusionBackbone."
    return factory


for _name, (_family, _repo, _desc) in VIT_BACKBONES.items():
    register_backbone(BackboneEntry(
        _name, _family, _vit_factory(_name, _family, _repo), _desc, checkpoint=_repo,
        availability=_availability(_repo, ("torch", "transformers"), "torch", _FAMILY_MODULES[_family]),
    ))

for _name, (_repo, _desc) in SD_BACKBONES.items():
    register_backbone(BackboneEntry(
        _name, "sd", _sd_factory(_name, _repo), _desc, checkpoint=_repo,
        availability=_availability(_repo, ("torch", "transformers", "diffusers"), "sd"),
    ))
