"""Segment Anything as medshot's promptable segmenter (transformers' ``SamModel``, no torchvision).

Per target, the image encoder runs once; every label (and the optional second iteration) then costs
one prompt-encoder + mask-decoder call on the cached image embedding. When the feature backbone is the
same SAM encoder (``--backbone sam_vit_b``), the backbone's pass is reused through a small module-level
cache, so features and segmentation come from one encoder pass.

Geometry. medshot points are ``(x, y)`` pixels with the origin at the centre of the top-left pixel. SAM
sees the image resized so that its longest side is the model's ``image_size`` (1024 for released
models) and padded at the bottom/right to a square. With ``W'`` the resized width, a pixel centre ``x``
lands at ``(x + 0.5) * W' / W - 0.5`` in the resized frame (the prompt encoder then adds the 0.5 back and
divides by ``image_size``); low-resolution mask logits go back the reverse way: upsampled to the padded
square, cropped to ``H' x W'``, resized to ``H x W``.

This module imports without torch (it registers its names with the segmenter registry on import); torch
and transformers load when a SAM segmenter is built.
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
from scipy import ndimage

from ..errors import MedshotError, WeightsNotFoundError
from ..weights import missing_weights_message, resolve_weights, weights_present
from . import _load_plugins, register_segmenter
from .base import Prompt, Segmentation, box_from_mask, box_from_points


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
        from ..sam_checkpoint import model_from_checkpoint

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


# -- the segmenter --------------------------------------------------------------------------------


@dataclass
class _Decoded:
    low: Any  # (k, low, low) torch logits over the padded frame
    full: np.ndarray  # (k, H, W) logits at the target's resolution
    iou: np.ndarray  # (k,) predicted IoU
    choice: float = 0.0  # selection score of the chosen candidate
    best: int = 0


class SamSegmenter:
    """Segment Anything driven by the carried prompts of each label.

    Parameters
    ----------
    name : str
        medshot name of the checkpoint (``sam_vit_b``, ``slimsam_50``, ``medsam_vit_b``, ...).
    weights : path or hub id, optional
        ``save_pretrained`` folder, official ``.pth`` file or hub id (default: the name's hub checkpoint
        from the local Hugging Face cache).
    use_box : bool
        Add a box prompt per label.
    box_source : {"auto", "mask", "points"}
        Where the box comes from: ``"auto"`` takes the coarse mask's box when there is a coarse mask (it
        bounds the whole structure, the positive points only its inside), else ``Prompt.box_xyxy``, else
        the positive points' box.
    use_mask_prompt : bool
        Give the coarse mask to SAM as a low-resolution mask prompt.
    iterate : bool
        Decode a second time with the best mask's logits as the mask prompt.
    multimask : bool
        Ask for SAM's three candidate masks and choose by predicted IoU and agreement with the coarse
        mask; otherwise take SAM's single-mask output.
    device, dtype : optional
        Torch device and dtype (``float32``, ``bfloat16``, ``float16``).
    runtime : SamRuntime, optional
        An already loaded model (then ``weights``, ``device`` and ``dtype`` are not used); see :meth:`from_model`.
    """

    def __init__(self, name: str = "sam_vit_b", weights: str | os.PathLike | None = None, use_box: bool = True,
                 box_source: str = "auto", use_mask_prompt: bool = False, iterate: bool = False,
                 multimask: bool = True, device=None, dtype=None, runtime: SamRuntime | None = None):
        if box_source not in ("auto", "mask", "points"):
            raise MedshotError(f"box_source must be auto, mask or points, not '{box_source}'")
        self.name = name
        self.sam = runtime if runtime is not None else load_sam(name, weights, device, dtype)
        self.use_box = use_box
        self.box_source = box_source
        self.use_mask_prompt = use_mask_prompt
        self.iterate = iterate
        self.multimask = multimask

    @classmethod
    def from_model(cls, model, name: str = "sam", mean=SAM_MEAN, std=SAM_STD, **options) -> SamSegmenter:
        """A segmenter around an already built ``SamModel`` (benchmarks, experiments)."""
        return cls(name, runtime=SamRuntime(model.eval(), tuple(mean), tuple(std), "<model>"), **options)

    @property
    def model(self):
        return self.sam.model

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Segmentation]:
        """Masks for every prompt's label in ``image`` ((H, W) float in [0, 1]), one encoder pass in all."""
        image = np.asarray(image, np.float32)
        embedding, frame = self.sam.embed(image)
        results = [self._segment_one(embedding, frame, p) for p in prompts]
        return _resolve_overlaps(results)

    # ------------------------------------------------------------------------------------------

    def _segment_one(self, embedding, frame: SamFrame, prompt: Prompt) -> tuple[Segmentation, np.ndarray | None]:
        H, W = frame.shape
        coarse = None if prompt.mask is None else np.asarray(prompt.mask, bool)
        if coarse is not None and not coarse.any():
            coarse = None
        pos = np.asarray(prompt.positive_xy, np.float64).reshape(-1, 2)
        neg = np.asarray(prompt.negative_xy, np.float64).reshape(-1, 2)
        if len(pos) == 0 and coarse is not None:
            pos = _interior_point(coarse)[None]
        box = self._box(prompt, coarse, pos, (H, W)) if self.use_box else None
        if len(pos) == 0 and box is None:
            return Segmentation(prompt.label, np.zeros((H, W), bool), 0.0), None
        points = np.vstack([pos, neg])
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.int64)
        mask_input = None
        if self.use_mask_prompt and coarse is not None:
            mask_input = frame.mask_to_lowres(coarse, self.sam.lowres_size)
        out = self._choose(self._decode(embedding, frame, points, labels, box, mask_input, self.multimask), coarse)
        if self.iterate:
            # SAM's interactive loop: the previous best logits as mask prompt; one mask is unambiguous then.
            again = self._decode(embedding, frame, points, labels, box, out.low[out.best][None, None], False)
            out = self._choose(again, coarse)
        logits = out.full[out.best]
        mask = logits > 0
        score = float(np.clip(out.choice, 0.0, 1.0)) if mask.any() else 0.0
        return Segmentation(prompt.label, mask, score), logits

    def _box(self, prompt: Prompt, coarse, pos: np.ndarray, shape) -> np.ndarray | None:
        candidates = []
        if self.box_source in ("auto", "mask") and coarse is not None:
            candidates.append(box_from_mask(coarse))
        if self.box_source in ("auto", "points"):
            if prompt.box_xyxy is not None:
                candidates.append(np.asarray(prompt.box_xyxy, np.float64))
            if len(pos) >= 2:
                candidates.append(box_from_points(pos, 0.1, shape))
        for box in candidates:
            # A box around a single point says nothing about extent and SAM reads it as a tiny object.
            if box is not None and box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                return box
        return None

    def _decode(self, embedding, frame: SamFrame, points: np.ndarray, labels: np.ndarray, box, mask_input,
                multimask: bool) -> _Decoded:
        """One prompt-encoder + mask-decoder call on the cached embedding."""
        import torch

        device, dtype = self.sam.device, self.sam.dtype
        kwargs: dict[str, Any] = {"multimask_output": multimask}
        if len(points):
            xy = frame.to_sam(points)
            kwargs["input_points"] = torch.tensor(xy, dtype=torch.float32, device=device)[None, None]
            kwargs["input_labels"] = torch.tensor(labels, device=device)[None, None]
        if box is not None:
            corners = frame.to_sam(np.asarray(box, np.float64).reshape(2, 2)).reshape(4)
            kwargs["input_boxes"] = torch.tensor(corners, dtype=torch.float32, device=device)[None, None]
        if mask_input is not None:
            kwargs["input_masks"] = mask_input.to(device=device, dtype=dtype)
        with torch.inference_mode():
            out = self.sam.model(image_embeddings=embedding, **kwargs)
        low = out.pred_masks[0, 0].float()
        iou = out.iou_scores[0, 0].float().cpu().numpy()
        return _Decoded(low, frame.lowres_to_image(low), iou)

    def _choose(self, dec: _Decoded, coarse: np.ndarray | None) -> _Decoded:
        """Pick the candidate with the best predicted IoU, averaged with its IoU against the coarse mask if any."""
        scores = dec.iou.astype(np.float64)
        if coarse is not None:
            masks = dec.full > 0
            inter = (masks & coarse).sum(axis=(1, 2))
            union = (masks | coarse).sum(axis=(1, 2))
            agreement = inter / np.maximum(union, 1)
            scores = 0.5 * scores + 0.5 * agreement
        dec.best = int(np.argmax(scores))
        dec.choice = float(scores[dec.best])
        return dec


def _interior_point(mask: np.ndarray) -> np.ndarray:
    """A click for a label that has only a carried mask: deep inside it, nearest its centroid among the deepest."""
    dist = ndimage.distance_transform_edt(mask)
    ys, xs = np.nonzero(dist >= 0.9 * dist.max())
    cy, cx = np.argwhere(mask).mean(axis=0)
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return np.array([xs[i], ys[i]], np.float64)


def _resolve_overlaps(results: list[tuple[Segmentation, np.ndarray | None]]) -> list[Segmentation]:
    """Where two labels claim a pixel, the one with the larger SAM logit keeps it."""
    segs = [r[0] for r in results]
    if len(segs) > 1:
        stack = np.stack([np.where(s.mask, lg, -np.inf) if lg is not None else np.full(s.mask.shape, -np.inf)
                          for s, (_, lg) in zip(segs, results)])
        winner = np.argmax(stack, axis=0)
        for i, s in enumerate(segs):
            s.mask = s.mask & (winner == i)
    return segs


def _factory(name: str):
    def make(**options) -> SamSegmenter:
        return SamSegmenter(name, **options)

    return make


# When the SAM backbone imports this module first, load the registry now so 'classical' stays listed first.
_load_plugins()
for _name in VARIANTS:
    register_segmenter(_name, _factory(_name), lambda _n=_name: availability(_n))
