"""Dense features from the Hugging Face ViTs: DINO v1, DINOv2 (+registers), DINOv3 and CLIP's vision tower.

One wrapper serves all of them; :data:`FAMILIES` says where each ``transformers`` class keeps its
blocks, attention projections, patch embedding and position information. The model's own forward
runs unchanged except for two things done only when ``stride`` < patch size (overlapping patches,
Amir et al. 2021): the patch-embedding convolution's stride is lowered, and the model is told the grid
size ``1 + (H - p) // s`` so that its own code interpolates the position embeddings (or lays out the
RoPE coordinates, DINOv3) for that grid. Features are read with a forward hook on the requested
block (``token``) or attention projection (``key``/``query``/``value``); the forward stops there, so
later blocks cost nothing.

This module imports torch; :mod:`medshot.features.foundation` imports it only when a backbone is built.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MedshotError, WeightsNotFoundError
from ..models.weights import resolve_weights
from .base import FeatureMap
from .logbin import log_bin as log_bin_grid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FACETS = ("token", "key", "query", "value")


@dataclass(frozen=True)
class ViTFamily:
    """Where one ``transformers`` ViT class keeps the parts medshot reaches into.

    Attributes
    ----------
    model_class : str
        Class name in the ``transformers`` package.
    layers : str
        Dotted path of the ``ModuleList`` of transformer blocks.
    attention : str
        Attribute of a block holding ``q_proj``, ``k_proj`` and ``v_proj``.
    patch_conv : str
        Dotted path of the patch-embedding ``Conv2d``.
    positions : str
        Dotted path of the module that has ``interpolate_pos_encoding`` (absolute position
        embeddings) or, with ``rope``, of the RoPE module that reads the grid from the pixel shape.
    rope : bool
    default_layer : int
        Block read by default, counted from 1; negative counts from the end (-1 = last block).
    forward_kwargs, load_kwargs : tuple of (name, value)
        Extra keywords for the model's ``forward`` / ``from_pretrained``.
    mean, std : tuple of float
        Input normalisation when the checkpoint has no ``preprocessor_config.json``.
    """

    model_class: str
    layers: str
    attention: str
    patch_conv: str
    positions: str
    rope: bool = False
    default_layer: int = -1
    forward_kwargs: tuple = ()
    load_kwargs: tuple = ()
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


FAMILIES = {
    "dino": ViTFamily("ViTModel", "layers", "attention", "embeddings.patch_embeddings.projection", "embeddings",
                      forward_kwargs=(("interpolate_pos_encoding", True),),
                      load_kwargs=(("add_pooling_layer", False),)),
    "dinov2": ViTFamily("Dinov2Model", "encoder.layer", "attention", "embeddings.patch_embeddings.projection",
                        "embeddings"),
    "dinov2_reg": ViTFamily("Dinov2WithRegistersModel", "encoder.layer", "attention",
                            "embeddings.patch_embeddings.projection", "embeddings"),
    "dinov3": ViTFamily("DINOv3ViTModel", "model.layer", "attention", "embeddings.patch_embeddings",
                        "rope_embeddings", rope=True),
    # CLIP's last block is tuned to the pooled image embedding; the one before keeps more spatial detail.
    "clip": ViTFamily("CLIPVisionModel", "encoder.layers", "self_attn", "embeddings.patch_embedding", "embeddings",
                      default_layer=-2, forward_kwargs=(("interpolate_pos_encoding", True),),
                      mean=CLIP_MEAN, std=CLIP_STD),
}


class _StopForward(Exception):
    """Raised by the feature hook: the blocks after the one read are not needed."""


def _module(root: torch.nn.Module, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def torch_dtype(dtype) -> torch.dtype | None:
    """``None``, a ``torch.dtype`` or its name (``"bfloat16"``) -> ``torch.dtype`` or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise MedshotError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)")
    return value


def fit_size(n: float, patch: int, stride: int) -> int:
    """The size nearest ``n`` that patches of ``patch`` pixels at ``stride`` tile exactly (at least one patch)."""
    return patch + stride * max(0, int(round((n - patch) / stride)))


def model_input_size(shape: tuple[int, int], patch: int, stride: int,
                     image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """``(H', W')`` the image is resized to before the model sees it.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the given image.
    patch, stride : int
    image_size : int or (int, int), optional
        None keeps about the given size; an int is the longer side (aspect ratio kept); a pair is
        ``(H', W')`` before rounding.
    """
    H, W = shape
    if image_size is None:
        th, tw = float(H), float(W)
    elif isinstance(image_size, int | float):
        f = float(image_size) / max(H, W)
        th, tw = H * f, W * f
    else:
        th, tw = (float(v) for v in image_size)
    return fit_size(th, patch, stride), fit_size(tw, patch, stride)


def to_model_input(image: np.ndarray, size: tuple[int, int], mean, std) -> torch.Tensor:
    """``(H, W)`` gray or ``(H, W, 3)`` image in [0, 1] -> normalised ``(1, 3, H', W')`` float32 tensor."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)[None]
    if tuple(size) != tuple(arr.shape[:2]):
        # Antialias when shrinking so that small structures are averaged, not aliased.
        shrink = size[0] < arr.shape[0] or size[1] < arr.shape[1]
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    # A gray (1-channel) tensor broadcasts against the 3-channel constants: replication for free.
    return (t - mean_t) / std_t


def read_normalisation(source: str | os.PathLike, family: ViTFamily) -> tuple[tuple, tuple]:
    """``image_mean``/``image_std`` of the checkpoint's preprocessor config, else the family's constants."""
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
            mean, std = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
            if len(mean) == 3 and len(std) == 3:
                return mean, std
        except (ValueError, KeyError, TypeError):
            pass  # a malformed processor file is not worth failing for: the family constants are right
    return family.mean, family.std


class ViTBackbone:
    """Dense ViT features of one layer and facet, optionally with overlapping patches and log binning.

    Parameters
    ----------
    name : str
        medshot's name for the backbone.
    family : ViTFamily
    model : torch.nn.Module
        A loaded model of ``family.model_class``, in eval mode. With ``stride`` < patch size its patch
        embedding is re-strided during each call only (see :meth:`overlapping`).
    layer : int, optional
        Block to read, counted from 1 (block ``L``'s output is ``hidden_states[L]``); negative counts
        from the end. Default: ``family.default_layer``.
    facet : {"token", "key", "query", "value"}
        ``token``: the block's output; ``key``/``query``/``value``: that block's attention
        projections of its (normalised) input.
    stride : int, optional
        Patch-embedding stride; default the patch size. Smaller = overlapping patches, finer grid.
    log_bin : bool
        Return 17x-wider log-binned descriptors.
    image_size : int or (int, int), optional
        Model input size (see :func:`model_input_size`); default about the given image's size.
    mean, std : tuple of float, optional
        Input normalisation; default the family's.
    """

    def __init__(self, name: str, family: ViTFamily, model: torch.nn.Module, layer: int | None = None,
                 facet: str = "token", stride: int | None = None, log_bin: bool = False,
                 image_size: int | tuple[int, int] | None = None, mean=None, std=None):
        self.name = name
        self.family = family
        self.model = model
        self.blocks = _module(model, family.layers)
        self.conv = _module(model, family.patch_conv)
        self.patch = int(self.conv.kernel_size[0])
        n = len(self.blocks)
        layer = family.default_layer if layer is None else int(layer)
        if not (1 <= layer <= n or -n <= layer <= -1):
            raise MedshotError(f"backbone '{name}' has {n} layers: layer must be 1..{n} (or -1..-{n} from the end), "
                               f"got {layer}")
        self.layer = layer if layer > 0 else n + 1 + layer
        if facet not in FACETS:
            raise MedshotError(f"facet must be one of {', '.join(FACETS)}, got '{facet}'")
        self.facet = facet
        self.stride = self.patch if stride is None else int(stride)
        if not 1 <= self.stride <= self.patch:
            raise MedshotError(f"stride must be 1..{self.patch} (the patch size) for '{name}', got {stride}")
        self.log_bin = bool(log_bin)
        self.image_size = image_size
        self.mean = tuple(mean or family.mean)
        self.std = tuple(std or family.std)
        self.param = next(model.parameters())

    # -- overlapping patches ----------------------------------------------------------------------

    def _native_extent(self, n: int) -> int:
        """The input size that, at stride = patch, gives the grid this stride gives an ``n``-pixel side."""
        return self.patch * (1 + (n - self.patch) // self.stride)

    @contextmanager
    def overlapping(self):
        """The model with this backbone's patch stride while inside; as loaded again afterwards.

        Patching per call (not once at load) leaves the model shareable, e.g. by two backbones with
        different strides.
        """
        if self.stride == self.patch:
            yield self.model
            return
        owner = _module(self.model, self.family.positions)
        self.conv.stride = (self.stride, self.stride)
        if self.family.rope:
            # The RoPE module derives the patch grid from the pixel shape (size // patch): hand it a
            # zero-copy stand-in of the shape that yields our grid.
            def grid_stand_in(module, args):
                pv = args[0]
                size = (self._native_extent(pv.shape[-2]), self._native_extent(pv.shape[-1]))
                return (pv[..., :1, :1].expand(*pv.shape[:-2], *size),)

            handle = owner.register_forward_pre_hook(grid_stand_in)
        else:
            # The model's own interpolation (bicubic, with its own dtype/antialias choices), asked for our grid.
            native = owner.interpolate_pos_encoding

            def interpolate_pos_encoding(embeddings, height, width):
                return native(embeddings, self._native_extent(height), self._native_extent(width))

            owner.interpolate_pos_encoding = interpolate_pos_encoding
        try:
            yield self.model
        finally:
            self.conv.stride = (self.patch, self.patch)
            if self.family.rope:
                handle.remove()
            else:
                del owner.interpolate_pos_encoding  # the class's method again

    # -- forward ----------------------------------------------------------------------------------

    def input_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        return model_input_size(shape, self.patch, self.stride, self.image_size)

    def grid_shape(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Cells of the feature grid for a model input of ``input_size``: ``1 + (H' - p) // s``."""
        return tuple(1 + (n - self.patch) // self.stride for n in input_size)  # type: ignore[return-value]

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """The normalised model input ``(1, 3, H', W')`` for an image in [0, 1]."""
        size = self.input_size(np.shape(image)[:2])
        t = to_model_input(image, size, self.mean, self.std)
        return t.to(device=self.param.device, dtype=self.param.dtype)

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(tokens, C)`` of the chosen layer and facet, prefix tokens (CLS, registers) first."""
        block = self.blocks[self.layer - 1]
        target = block if self.facet == "token" else getattr(getattr(block, self.family.attention),
                                                             self.facet[0] + "_proj")
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = target.register_forward_hook(hook)
        try:
            with torch.inference_mode(), self.overlapping() as model:
                model(pixel_values=pixel_values, **dict(self.family.forward_kwargs))
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0][0]

    def __call__(self, image: np.ndarray) -> FeatureMap:
        H, W = np.shape(image)[:2]
        pixel_values = self.preprocess(image)
        Hp, Wp = pixel_values.shape[-2:]
        gh, gw = self.grid_shape((Hp, Wp))
        tokens = self.tokens(pixel_values)
        prefix = tokens.shape[0] - gh * gw
        if prefix < 0:
            raise RuntimeError(f"{self.name}: {tokens.shape[0]} tokens for a {gh}x{gw} grid")
        # (gh*gw, C) -> (C, gh, gw): one grid-sized copy.
        data = tokens[prefix:].float().T.reshape(-1, gh, gw).contiguous().cpu().numpy()
        if self.log_bin:
            data = log_bin_grid(data)
        fy, fx = H / Hp, W / Wp
        # Cell i covers resized pixels [i*s, i*s + p); its centre maps back through the resize.
        return FeatureMap(data, (self.stride * fy, self.stride * fx),
                          (self.patch / 2 * fy - 0.5, self.patch / 2 * fx - 0.5), (int(H), int(W)))


def load_pretrained(cls, source: str, name: str, repo_id: str, **kwargs):
    """``cls.from_pretrained(source)`` that refuses checkpoints of another architecture.

    ``from_pretrained`` only warns when weights are missing and initialises them randomly; for a
    feature extractor that would silently give meaningless features, so missing weights are an error.
    """
    from transformers.utils import logging as hf_logging

    # transformers logs every unused weight (e.g. CLIP's whole text tower) as a warning table: quiet that,
    # since the missing weights, which do matter, are checked below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(source, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"could not load '{name}' weights from {source}: {exc} (expected a "
                                   f"save_pretrained folder of {cls.__name__}, e.g. the '{repo_id}' checkpoint)",
                                   None) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise WeightsNotFoundError(f"{source} is not a {cls.__name__} checkpoint for '{name}': {len(missing)} "
                                   f"weights missing (e.g. {missing[0]}); expected e.g. '{repo_id}'")
    return model.eval()


def load_vit(name: str, family_name: str, repo_id: str, weights=None, layer=None, facet="token", stride=None,
             log_bin=False, image_size=None, device=None, dtype=None) -> ViTBackbone:
    """Resolve weights, load the model and wrap it (see :class:`ViTBackbone` for the options)."""
    try:
        import transformers
    except ImportError as exc:
        raise MedshotError(f"backbone '{name}' needs transformers ({exc}): pip install 'medshot[torch]'") from exc

    family = FAMILIES[family_name]
    cls = getattr(transformers, family.model_class, None)
    if cls is None:
        raise MedshotError(f"backbone '{name}' needs transformers.{family.model_class}, which the installed "
                           f"transformers {transformers.__version__} does not have: pip install -U transformers")
    source = resolve_weights(name, repo_id, weights)
    kwargs = dict(family.load_kwargs)
    dt = torch_dtype(dtype)
    if dt is not None:
        kwargs["dtype"] = dt
    model = load_pretrained(cls, source, name, repo_id, **kwargs)
    if device is not None:
        model.to(device)
    mean, std = read_normalisation(source, family)
    return ViTBackbone(name, family, model, layer=layer, facet=facet, stride=stride, log_bin=log_bin,
                       image_size=image_size, mean=mean, std=std)
