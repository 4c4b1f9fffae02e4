"""Segment Anything models: the catalogue of checkpoints, loading, preprocessing and the embedding cache.

Both the SAM feature backbone (:mod:`medshot.features.sam`) and the SAM segmenter
(:mod:`medshot.segment.sam`) use SAM's image encoder through :class:`SamRuntime`. Loaded models are
shared by ``(source, device, dtype, normalisation)`` and the last image embeddings are cached, so when
the backbone and the segmenter run on the same target with the same weights the encoder runs once.

Geometry. medshot points are ``(x, y)`` pixels with the origin at the centre of the top-left pixel. SAM
sees the image resized so that its longest side is the model's ``image_size`` (1024 for released
models) and padded at the bottom/right to a square. With ``W'`` the resized width, a pixel centre ``x``
lands at ``(x + 0.5) * W' / W - 0.5`` in the resized frame (the prompt encoder then adds the 0.5 back and
divides by ``image_size``); low-resolution mask logits go back the reverse way: upsampled to the padded
square, cropped to ``H' x W'``, resized to ``H x W``. :class:`SamFrame` holds both maps.

This module imports without torch; torch and transformers load when a model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MedshotError, WeightsNotFoundError
from .weights import missing_weights_message, resolve_weights, weights_present


@dataclass(frozen=True)
class SamVariant:
    """A medshot name for a SAM checkpoint: its hub repository and, when there is one, the official file."""

    name: str
    repo_id: str
    official_file: str | None
    description: str


VARIANTS: dict[str, SamVariant] = {v.name: v for v in (
    SamVariant("sam_vit_b", "facebook/sam-vit-base", "sam_vit_b_01ec64.pth", "SAM ViT-B (91M-parameter encoder)"),
    SamVariant("sam_vit_l", "facebook/sam-vit-large", "sam_vit_l_0b3195.pth", "SAM ViT-L (308M-parameter encoder)"),
    SamVariant("sam_vit_h", "facebook/sam-vit-huge", "sam_vit_h_4b8939.pth", "SAM ViT-H (636M-parameter encoder)"),
    SamVariant("slimsam_50", "nielsr/slimsam-50-uniform", None, "SlimSAM-50: ViT-B pruned to half width (CPU)"),
    SamVariant("slimsam_77", "nielsr/slimsam-77-uniform", None, "SlimSAM-77: ViT-B pruned by 77% (fastest)"),
    SamVariant("medsam_vit_b", "flaviagiammarino/medsam-vit-base", "medsam_vit_b.pth",
               "MedSAM: SAM ViT-B fine-tuned on medical images"),
)}

OFFICIAL_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
MEDSAM_URL = "https://github.com/bowang-lab/MedSAM"

# SAM's pixel statistics on the 0..255 scale (the official predictor's pixel_mean / pixel_std).
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
# MedSAM's own inference feeds the encoder intensities in [0, 1] without mean/std normalisation.
MEDSAM_MEAN = (0.0, 0.0, 0.0)
MEDSAM_STD = (255.0, 255.0, 255.0)
# A binary coarse mask becomes mask-prompt logits of +-this value (SAM's own confident logits are of
# this order; 0/1 inputs would read as "barely foreground").
MASK_PROMPT_LOGIT = 10.0
_CACHE_SIZE = 2


def torch_available() -> bool:
    """Whether torch and transformers are installed (looked up without importing them)."""
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


# -- geometry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamFrame:
    """Where an ``(H, W)`` image sits in SAM's square input.

    Attributes
    ----------
    shape : (int, int)
        ``(H, W)`` of the original image.
    resized : (int, int)
        ``(H', W')`` after scaling the longest side to ``size`` (rounded as SAM's own preprocessing does).
    size : int
        Side of the padded square input (the model's ``image_size``).
    """

    shape: tuple[int, int]
    resized: tuple[int, int]
    size: int

    @classmethod
    def for_image(cls, shape: tuple[int, int], size: int) -> SamFrame:
        H, W = int(shape[0]), int(shape[1])
        scale = size / max(H, W)
        return cls((H, W), (int(H * scale + 0.5), int(W * scale + 0.5)), int(size))

    @property
    def scale_xy(self) -> np.ndarray:
        """Resized pixels per original pixel along x and y (they differ by the rounding of ``H'``, ``W'``)."""
        return np.array([self.resized[1] / self.shape[1], self.resized[0] / self.shape[0]])

    def to_sam(self, xy: np.ndarray) -> np.ndarray:
        """Original pixel ``(x, y)`` -> pixel coordinates in SAM's resized/padded frame (same convention)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return (xy + 0.5) * self.scale_xy - 0.5

    def from_sam(self, xy: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_sam`."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return (xy + 0.5) / self.scale_xy - 0.5

    def mask_to_lowres(self, mask: np.ndarray, low: int):
        """A mask ``(H, W)`` as ``(1, 1, low, low)`` mask-prompt logits in the padded frame (torch, float32)."""
        import torch
        import torch.nn.functional as F

        h, w = self.resized
        m = torch.as_tensor(np.asarray(mask, np.float32))[None, None]
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=h < self.shape[0])
        m = F.pad(m, (0, self.size - w, 0, self.size - h))
        frac = F.adaptive_avg_pool2d(m, (low, low))  # size is a multiple of low: plain block averages
        return (2 * frac - 1) * MASK_PROMPT_LOGIT

    def lowres_to_image(self, logits):
        """Low-resolution logits ``(n, low, low)`` over the padded frame -> ``(n, H, W)`` logits (numpy).

        As SAM's own post-processing: upsample to the padded square, drop the padding, resize to the original.
        """
        import torch.nn.functional as F

        h, w = self.resized
        x = logits.float()[:, None]
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x[..., :h, :w]
        x = F.interpolate(x, size=self.shape, mode="bilinear", align_corners=False)
        return x[:, 0].cpu().numpy()


# -- model loading and the shared embedding cache --------------------------------------------------


@dataclass
class SamRuntime:
    """A loaded SAM model plus what it needs to turn an image into pixel values.

    Attributes
    ----------
    model : SamModel
    mean, std : tuple of 3 floats
        Pixel normalisation on the 0..255 scale.
    source : str
        Where the weights came from (folder, file or hub snapshot).
    """

    model: Any
    mean: tuple[float, float, float] = SAM_MEAN
    std: tuple[float, float, float] = SAM_STD
    source: str = ""

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def lowres_size(self) -> int:
        """Side of the decoder's low-resolution masks (and of mask prompts): 4x the embedding grid (256)."""
        return 4 * int(self.model.config.prompt_encoder_config.image_embedding_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def pixel_values(self, image: np.ndarray):
        """``(1, 3, S, S)`` encoder input: gray -> 3 channels, [0, 1] -> 0..255, normalise, resize, zero-pad."""
        import torch
        import torch.nn.functional as F

        image = np.asarray(image, np.float32)
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        frame = SamFrame.for_image(rgb.shape[:2], self.image_size)
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None] * 255.0
        x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        # Normalising before resizing is the same map (bilinear weights sum to one) and padding must be 0
        # after normalisation, as in SAM's own preprocessing.
        h, w = frame.resized
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=h < frame.shape[0])
        x = F.pad(x, (0, frame.size - w, 0, frame.size - h))
        return x.to(self.device, self.dtype), frame

    def embed(self, image: np.ndarray):
        """``(embedding (1, C, g, g), frame)`` for ``image``: computed once, then served from the cache."""
        image = np.asarray(image)
        key = (_image_key(image), self.mean, self.std)
        for i, entry in enumerate(_EMBEDDINGS):
            if entry.model is self.model and entry.key == key:
                _EMBEDDINGS.append(_EMBEDDINGS.pop(i))  # most recently used last
                return entry.embedding, entry.frame
        import torch

        pixels, frame = self.pixel_values(image)
        with torch.inference_mode():
            embedding = self.model.get_image_embeddings(pixels)
        _EMBEDDINGS.append(_Embedding(self.model, key, embedding, frame))
        del _EMBEDDINGS[:-_CACHE_SIZE]
        return embedding, frame


@dataclass
class _Embedding:
    model: Any
    key: tuple
    embedding: Any
    frame: SamFrame


# The last few image embeddings, so the SAM backbone's encoder pass is reused by the SAM segmenter on the
# same target (OneShot gives both the same full-resolution array). Two entries: the target and the template.
_EMBEDDINGS: list[_Embedding] = []
# Loaded models by (source, device, dtype, normalisation): backbone and segmenter on the same weights share one.
_MODELS: dict[tuple, SamRuntime] = {}


def _image_key(image: np.ndarray) -> tuple:
    data = np.ascontiguousarray(image)
    return data.shape, str(data.dtype), hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def clear_caches() -> None:
    """Forget loaded models and cached embeddings (tests; freeing memory)."""
    _EMBEDDINGS.clear()
    _MODELS.clear()


def _torch_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if str(dtype).lower() not in names:
        raise MedshotError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)")
    return names[str(dtype).lower()]


def _normalization_for(name: str, source: Path) -> tuple[tuple, tuple]:
    """Pixel mean/std (0..255 scale) for a weights source: its preprocessor_config.json, else by checkpoint kind."""
    config = source / "preprocessor_config.json" if source.is_dir() else None
    if config is not None and config.is_file():
        try:
            spec = json.loads(config.read_text())
        except (OSError, ValueError):
            spec = {}
        rescale = float(spec.get("rescale_factor", 1 / 255)) if spec.get("do_rescale", True) else 1.0
        if spec.get("do_normalize", True):
            mean = spec.get("image_mean", [m / 255 for m in SAM_MEAN])
            std = spec.get("image_std", [s / 255 for s in SAM_STD])
        else:
            mean, std = [0.0] * 3, [1.0] * 3
        # (v * rescale - mean) / std == (v - mean / rescale) / (std / rescale)
        return tuple(float(m) / rescale for m in mean), tuple(float(s) / rescale for s in std)
    if source.is_file() and (name.startswith("medsam") or "medsam" in source.name.lower()):
        return MEDSAM_MEAN, MEDSAM_STD
    return SAM_MEAN, SAM_STD


def load_sam(name: str, weights: str | os.PathLike | None = None, device=None, dtype=None) -> SamRuntime:
    """Load (or reuse) the SAM model for medshot name ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`VARIANTS`; it picks the default hub checkpoint.
    weights : path or hub id, optional
        A ``save_pretrained`` folder, a state-dict file (official ``.pth`` or transformers layout) or a hub id.
    device : str, optional
        Torch device (default: ``cuda`` when available, else ``cpu``).
    dtype : str or torch.dtype, optional
        ``float32`` (default), ``bfloat16`` or ``float16``.

    Raises
    ------
    WeightsNotFoundError
        When the checkpoint is neither given nor in the local Hugging Face cache.
    """
    if not torch_available():
        raise MedshotError(f"segmenter '{name}' needs torch and transformers: pip install 'medshot[torch]' "
                           "(or use --segmenter classical, which needs neither)")
    variant = VARIANTS.get(name) or SamVariant(name, "facebook/sam-vit-base", "sam_vit_b_01ec64.pth", name)
    try:
        source = resolve_weights(name, variant.repo_id, weights)
    except WeightsNotFoundError as exc:
        message = _missing_message(variant)
        if exc.path is not None:  # a --weights path that is not there, rather than an uncached hub id
            message = f"weights path does not exist ({message})"
        raise WeightsNotFoundError(message, exc.path) from None
    path = Path(source)
    if path.exists():
        source = os.path.realpath(path)
    import torch  # after resolving, so a missing checkpoint is reported without the slow import

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tdtype = _torch_dtype(dtype)
    mean, std = _normalization_for(name, Path(source))
    key = (source, str(device), str(tdtype), mean, std)
    if key in _MODELS:
        return _MODELS[key]
    if Path(source).is_file():
        from .checkpoints import model_from_checkpoint

        model = model_from_checkpoint(source)
    else:
        model = _from_pretrained(source)
    runtime = SamRuntime(model.to(device=device, dtype=tdtype).eval(), mean, std, source)
    _MODELS[key] = runtime
    return runtime


def _from_pretrained(source: str):
    from transformers import SamModel

    config = Path(source) / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type != "sam":
            raise MedshotError(f"not a Segment Anything checkpoint (model_type '{model_type}')", source)
    try:
        return SamModel.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise MedshotError(f"cannot load SAM weights ({type(exc).__name__}: {exc})", source) from exc


def _missing_message(variant: SamVariant) -> str:
    extra = ""
    if variant.official_file:
        where = MEDSAM_URL if variant.name.startswith("medsam") else OFFICIAL_URL
        extra = f", or pass an official checkpoint file ({variant.official_file}, from {where})"
    return missing_weights_message(variant.name, variant.repo_id, extra).replace(
        "--weights DIR", "--weights DIR (backbone) / --segmenter-weights DIR (segmenter)")


def availability(name: str) -> tuple[bool, str]:
    """(ready, detail) for `medshot backbones`: needs torch + transformers and the checkpoint in the HF cache."""
    if not torch_available():
        return False, "needs torch + transformers (pip install 'medshot[torch]')"
    return weights_present(VARIANTS[name].repo_id)
