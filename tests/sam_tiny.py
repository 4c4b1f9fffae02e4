"""Tiny random Segment Anything models for the SAM tests (a few ms per pass, same code paths as SAM ViT-B)."""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 128  # the padded square input (1024 for released models)
PATCH = 16


def tiny_config(global_attn_indexes=(1,)):
    """A SamConfig shaped like the released ones but 32 channels wide, 2 layers deep, on a 128 input.

    The mask decoder keeps 8 heads: the official layout cannot show the head count, and the
    checkpoint converter assumes the released 8.
    """
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                             output_channels=32, image_size=IMAGE_SIZE, patch_size=PATCH, window_size=4,
                             global_attn_indexes=list(global_attn_indexes), num_pos_feats=16,
                             initializer_range=0.02)  # SAM's default 1e-10 makes every feature ~0
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=IMAGE_SIZE, patch_size=PATCH, mask_input_channels=8)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=8,
                                   iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def tiny_model(seed: int = 0):
    """A randomly initialised tiny SamModel; position tables are randomised too (SAM initialises them to 0)."""
    import torch
    from transformers import SamModel

    torch.manual_seed(seed)
    model = SamModel(tiny_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or name.endswith("pos_embed"):
                p.normal_(0, 0.5)
    return model


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """``save_pretrained`` a tiny model into ``folder`` (what --weights / --segmenter-weights point at)."""
    tiny_model(seed).save_pretrained(folder)
    return folder
