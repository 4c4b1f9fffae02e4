"""Builders and availability checks of the foundation-model backbones: DINO v1, DINOv2 (+registers),
DINOv3, CLIP and Stable Diffusion.

The names, checkpoints and descriptions are listed in :mod:`.catalogue`, which passes each entry's
``name``, ``family`` and ``repo_id`` here. Importing this module needs neither torch nor
transformers: the model code (:mod:`.vit`, :mod:`.diffusion`) is imported by the builders, and the
availability checks only look for the packages and the weights.
"""

from __future__ import annotations

import importlib.util

from ..core.errors import MedshotError
from ..models.weights import weights_present
from .base import Backbone

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


def _status(repo_id: str, packages: tuple[str, ...], extra: str, model_module: str | None = None) -> tuple[bool, str]:
    """Packages importable, model class in this transformers, weights in the HF cache: ``(ready, reason)``."""
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


def vit_status(name: str, family: str, repo_id: str) -> tuple[bool, str]:
    """Whether the ViT backbone ``name`` can run here: ``(ready, reason)`` (`medshot backbones`)."""
    return _status(repo_id, ("torch", "transformers"), "torch", _FAMILY_MODULES[family])


def sd_status(name: str, repo_id: str) -> tuple[bool, str]:
    """Whether the Stable Diffusion backbone ``name`` can run here: ``(ready, reason)``."""
    return _status(repo_id, ("torch", "transformers", "diffusers"), "sd")


# Explicit keywords (not **kwargs): the registry checks option names against these signatures.
def build_vit(name: str, family: str, repo_id: str, weights=None, layer=None, facet="token", stride=None,
              log_bin=False, image_size=None, device=None, dtype=None) -> Backbone:
    """Build the ViT backbone ``name``; see :class:`medshot.features.vit.ViTBackbone` for the options."""
    try:
        from .vit import load_vit
    except ImportError as exc:
        raise MedshotError(f"backbone '{name}' needs torch and transformers ({exc}): "
                           f"pip install 'medshot[torch]'") from exc
    return load_vit(name, family, repo_id, weights=weights, layer=layer, facet=facet, stride=stride,
                    log_bin=log_bin, image_size=image_size, device=device, dtype=dtype)


def build_sd(name: str, repo_id: str, weights=None, timestep=261, up_block=1, ensemble=1, prompt="",
             image_size=None, seed=0, log_bin=False, layer=None, device=None, dtype=None) -> Backbone:
    """Build the Stable Diffusion backbone ``name``; see :class:`medshot.features.diffusion.DiffusionBackbone`.

    ``layer`` is accepted as another name for ``up_block`` so that the CLI's ``--layer`` reaches it.
    """
    try:
        from .diffusion import load_diffusion
    except ImportError as exc:
        raise MedshotError(f"backbone '{name}' needs torch, diffusers and transformers ({exc}): "
                           f"pip install 'medshot[sd]'") from exc
    return load_diffusion(name, repo_id, weights=weights, timestep=timestep,
                          up_block=up_block if layer is None else layer, ensemble=ensemble, prompt=prompt,
                          image_size=image_size, seed=seed, log_bin=log_bin, device=device, dtype=dtype)
