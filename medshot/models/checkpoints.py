"""Official Segment Anything checkpoints (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``) as transformers models.

The official repository stores a plain state dict whose key names differ from transformers'
``SamModel`` (``image_encoder.blocks.3.norm1`` vs ``vision_encoder.layers.3.layer_norm1`` and so on).
We rename the keys in memory (so no converted copy is written), read the architecture off the tensor
shapes (ViT-B/L/H, or any pruned SlimSAM-like width) and load the tensors into a ``SamModel`` built
from the matching ``SamConfig``. Files are read with ``torch.load(..., weights_only=True)``, which
refuses pickled code. torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core.errors import MedshotError

# One rule per group of keys: official template -> transformers template. ``{i}`` is a block or layer
# index, ``{p}`` a parameter name and ``{rest}`` any tail that both layouts spell the same way. Rules are
# tried in order and the first full match wins, in both directions, so specific rules precede generic ones.
_RULES: list[tuple[str, str]] = [
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm1.{p}", "vision_encoder.layers.{i}.layer_norm1.{p}"),
    ("image_encoder.blocks.{i}.norm2.{p}", "vision_encoder.layers.{i}.layer_norm2.{p}"),
    ("image_encoder.blocks.{i}.{rest}", "vision_encoder.layers.{i}.{rest}"),  # attn.qkv, attn.proj, rel_pos, mlp
    ("image_encoder.neck.0.{p}", "vision_encoder.neck.conv1.{p}"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.{p}", "vision_encoder.neck.conv2.{p}"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
     "prompt_encoder.shared_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.{i}.{p}", "prompt_encoder.point_embed.{i}.{p}"),
    ("prompt_encoder.not_a_point_embed.{p}", "prompt_encoder.not_a_point_embed.{p}"),
    ("prompt_encoder.no_mask_embed.{p}", "prompt_encoder.no_mask_embed.{p}"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm{n}.{p}", "mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}"),
    ("mask_decoder.transformer.layers.{i}.{rest}", "mask_decoder.transformer.layers.{i}.{rest}"),
    ("mask_decoder.transformer.norm_final_attn.{p}", "mask_decoder.transformer.layer_norm_final_attn.{p}"),
    ("mask_decoder.transformer.final_attn_token_to_image.{rest}",
     "mask_decoder.transformer.final_attn_token_to_image.{rest}"),
    ("mask_decoder.iou_token.{p}", "mask_decoder.iou_token.{p}"),
    ("mask_decoder.mask_tokens.{p}", "mask_decoder.mask_tokens.{p}"),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
]
# The official MLP heads number their linear layers 0..n-1; transformers calls them proj_in, layers.0..n-3,
# proj_out. Which name a layer gets depends on the head's depth, so these keys are renamed by _mlp_key.
_MLP_RE = re.compile(r"(?P<head>mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\."
                     r"(?P<name>proj_in|proj_out|layers\.(?P<k>\d+))\.(?P<p>weight|bias)")
# Buffers some fine-tuned checkpoints carry but SamModel does not have (it normalises outside the model).
_IGNORED_OFFICIAL = ("pixel_mean", "pixel_std")
# transformers keeps a second, tied copy of the prompt encoder's random Fourier matrix.
_TIED_COPY = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")

_FIELDS = {"i": r"(?P<i>\d+)", "n": r"(?P<n>\d+)", "p": r"(?P<p>weight|bias)", "rest": r"(?P<rest>.+)"}


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern)


_FORWARD = [(_compile(src), dst) for src, dst in _RULES]
_BACKWARD = [(_compile(dst), src) for src, dst in _RULES]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


def _mlp_depths(keys) -> dict[str, int]:
    """Number of linear layers of each MLP head (the same count in both layouts)."""
    names: dict[str, set[str]] = {}
    for key in keys:
        m = _MLP_RE.fullmatch(key)
        if m:
            names.setdefault(m["head"], set()).add(m["name"])
    return {head: len(v) for head, v in names.items()}


def _mlp_key(key: str, depths: dict[str, int], to_hf: bool) -> str | None:
    """Rename one linear layer of an MLP head: official ``layers.k`` <-> ``proj_in``/``layers.k-1``/``proj_out``."""
    m = _MLP_RE.fullmatch(key)
    if m is None:
        return None
    n = depths[m["head"]]
    if to_hf:
        if m["k"] is None:
            return None
        k = int(m["k"])
        name = "proj_in" if k == 0 else "proj_out" if k == n - 1 else f"layers.{k - 1}"
    else:
        k = 0 if m["name"] == "proj_in" else n - 1 if m["name"] == "proj_out" else int(m["k"]) + 1
        name = f"layers.{k}"
    return f"{m['head']}.{name}.{m['p']}"


def official_to_hf(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename an official Segment Anything state dict to transformers ``SamModel`` keys (tensors shared).

    Raises
    ------
    MedshotError
        When a key is not part of the Segment Anything layout.
    """
    depths = _mlp_depths(state_dict)
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _IGNORED_OFFICIAL:
            continue
        new = _mlp_key(key, depths, to_hf=True) or _rename(key, _FORWARD)
        if new is None:
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise MedshotError(f"not a Segment Anything checkpoint: unexpected key(s) {', '.join(unknown[:5])}"
                           + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    if _TIED_COPY[1] in out:
        out[_TIED_COPY[0]] = out[_TIED_COPY[1]]
    return out


def hf_to_official(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`official_to_hf`: transformers ``SamModel`` keys -> official keys.

    Used to read the architecture of a transformers-layout file, and by the tests to generate
    official-layout state dicts without the official package.
    """
    depths = _mlp_depths(state_dict)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key == _TIED_COPY[0]:
            if _TIED_COPY[1] in state_dict:
                continue
            key = _TIED_COPY[1]  # save_pretrained keeps only this copy of the tied pair
        new = _mlp_key(key, depths, to_hf=False) or _rename(key, _BACKWARD)
        if new is None:
            raise MedshotError(f"not a transformers SamModel state dict: unexpected key {key}")
        out[new] = value
    return out


def is_official_layout(state_dict: dict[str, Any]) -> bool:
    return any(k.startswith("image_encoder.") for k in state_dict)


def config_from_official(state_dict: dict[str, Any]):
    """A ``SamConfig`` matching an official-layout state dict, read off the tensor shapes.

    Only the mask decoder's number of attention heads cannot be seen in the shapes (q/k/v are full
    width); every released SAM, MedSAM and SlimSAM uses 8, which ``SamMaskDecoderConfig`` defaults to.
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    sd = state_dict
    try:
        patch_w = sd["image_encoder.patch_embed.proj.weight"]
        hidden, channels, patch = int(patch_w.shape[0]), int(patch_w.shape[1]), int(patch_w.shape[2])
        blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
        grid = int(sd["image_encoder.pos_embed"].shape[1]) if "image_encoder.pos_embed" in sd else None
        rel = [sd.get(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in blocks]
        if rel[0] is None:
            raise MedshotError("checkpoint has no relative position tables (attn.rel_pos_h); not a SAM image encoder")
        head_dim = int(rel[0].shape[1])
        if grid is None:
            grid = (max(int(r.shape[0]) for r in rel) + 1) // 2
        # Global-attention blocks carry tables over the whole token grid, windowed ones over one window.
        sizes = [(int(r.shape[0]) + 1) // 2 for r in rel]
        global_idx = [i for i, s in zip(blocks, sizes) if s == grid]
        windows = {s for s in sizes if s != grid}
        vision = SamVisionConfig(
            hidden_size=hidden, num_hidden_layers=len(blocks), num_attention_heads=hidden // head_dim,
            num_channels=channels, patch_size=patch, image_size=grid * patch,
            output_channels=int(sd["image_encoder.neck.0.weight"].shape[0]),
            mlp_dim=int(sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]),
            qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in sd,
            use_abs_pos="image_encoder.pos_embed" in sd,
            window_size=windows.pop() if windows else grid, global_attn_indexes=global_idx,
            num_pos_feats=int(sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1]),
        )
        prompt_hidden = int(sd["prompt_encoder.no_mask_embed.weight"].shape[1])
        prompt = SamPromptEncoderConfig(
            hidden_size=prompt_hidden, image_size=grid * patch, patch_size=patch,
            mask_input_channels=int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            num_point_embeddings=len({k for k in sd if k.startswith("prompt_encoder.point_embeddings.")}),
        )
        dec_layers = {int(m.group(1)) for k in sd if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
        dec_hidden = int(sd["mask_decoder.iou_token.weight"].shape[1])
        cross_q = sd["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"]
        iou_layers = [k for k in sd if re.fullmatch(r"mask_decoder\.iou_prediction_head\.layers\.\d+\.weight", k)]
        decoder = SamMaskDecoderConfig(
            hidden_size=dec_hidden, num_hidden_layers=len(dec_layers),
            mlp_dim=int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            attention_downsample_rate=dec_hidden // int(cross_q.shape[0]),
            num_multimask_outputs=int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            iou_head_depth=len(iou_layers),
            iou_head_hidden_dim=int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        )
    except KeyError as exc:
        raise MedshotError(f"not a Segment Anything checkpoint: missing {exc.args[0]}") from exc
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def official_variant(state_dict: dict[str, Any]) -> str:
    """``"vit_b"``, ``"vit_l"``, ``"vit_h"`` (by encoder width and depth) or ``"custom"``."""
    hidden = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    return {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}.get((hidden, depth), "custom")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a checkpoint file: ``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or safetensors."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling/format errors all mean "cannot use this file"
        raise MedshotError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path) from exc
    # Training scripts sometimes wrap the weights; the official release does not.
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise MedshotError("checkpoint is not a state dict of tensors", path)
    return sd


def model_from_checkpoint(path: str | Path):
    """A ``SamModel`` (eval mode, float32, CPU) holding the weights of a state-dict file in either layout."""
    import torch
    from transformers import SamModel

    sd = read_state_dict(path)
    try:
        if not is_official_layout(sd):
            if not any(k.startswith("vision_encoder.") for k in sd):
                raise MedshotError("not a Segment Anything checkpoint (neither official nor transformers SAM keys)")
            sd = hf_to_official(sd)  # one code path for reading the architecture
        config = config_from_official(sd)
        hf = official_to_hf(sd)
    except MedshotError as exc:
        raise MedshotError(exc.problem, path) from exc
    # Build on the meta device and adopt the file's tensors: no random initialisation, no second copy.
    with torch.device("meta"):
        model = SamModel(config)
    try:
        model.load_state_dict(hf, strict=True, assign=True)
    except RuntimeError as exc:
        raise MedshotError(f"checkpoint does not fit a SAM model: {str(exc).splitlines()[0]}", path) from exc
    return model.float().eval()
