"""Official Segment Anything ``.pth`` checkpoints: key conversion, architecture from shapes, loading.

There is no official checkpoint (nor the official package) here, so the official layout is generated
by inverting medshot's conversion map on a transformers model and filling it with random tensors;
the released key names are spot-checked by hand below.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam_tiny import tiny_config  # noqa: E402

from medshot.core.errors import MedshotError  # noqa: E402
from medshot.models import sam as samodel  # noqa: E402
from medshot.models.checkpoints import (  # noqa: E402
    config_from_official,
    hf_to_official,
    model_from_checkpoint,
    official_to_hf,
    official_variant,
)
from medshot.segment import get_segmenter  # noqa: E402
from medshot.segment import sam as samseg  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models on a shared 2-core machine: one thread is ~30x faster than contended multi-threading.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_official(config, seed: int = 0) -> dict:
    """A randomly initialised official-layout state dict for ``config`` (keys from the inverted map)."""
    from transformers import SamModel

    with torch.device("meta"):
        shapes = hf_to_official(SamModel(config).state_dict())
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in shapes.items()}


def test_official_key_names():
    official = _random_official(tiny_config())
    # Names as in the official segment_anything modules (Sam / ImageEncoderViT / PromptEncoder / MaskDecoder).
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed",
                "image_encoder.blocks.1.norm1.weight", "image_encoder.blocks.0.attn.qkv.weight",
                "image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.1.mlp.lin2.bias",
                "image_encoder.neck.0.weight", "image_encoder.neck.3.bias",
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "prompt_encoder.point_embeddings.3.weight", "prompt_encoder.not_a_point_embed.weight",
                "prompt_encoder.mask_downscaling.0.weight", "prompt_encoder.mask_downscaling.4.bias",
                "prompt_encoder.mask_downscaling.6.weight", "prompt_encoder.no_mask_embed.weight",
                "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
                "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.bias",
                "mask_decoder.transformer.layers.1.norm4.weight", "mask_decoder.transformer.layers.0.mlp.lin1.weight",
                "mask_decoder.transformer.final_attn_token_to_image.v_proj.weight",
                "mask_decoder.transformer.norm_final_attn.bias", "mask_decoder.iou_token.weight",
                "mask_decoder.mask_tokens.weight", "mask_decoder.output_upscaling.0.weight",
                "mask_decoder.output_upscaling.1.bias", "mask_decoder.output_upscaling.3.weight",
                "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight",
                "mask_decoder.output_hypernetworks_mlps.0.layers.2.bias",
                "mask_decoder.iou_prediction_head.layers.1.weight"):
        assert key in official, key
    for bad in ("vision_encoder", "layer_norm", "proj_in", "proj_out", "shared_image_embedding", ".mask_embed."):
        assert not any(bad in k for k in official), bad
    assert not any(k.endswith("layers.3.weight") and "iou_prediction_head" in k for k in official)


def test_conversion_round_trips_keys_and_tensors():
    official = _random_official(tiny_config())
    hf = official_to_hf(official)
    back = hf_to_official(hf)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)  # renamed, not copied
    # The tied copy transformers keeps is the same tensor as the prompt encoder's.
    tied = hf["shared_image_embedding.positional_embedding"]
    assert tied is hf["prompt_encoder.shared_embedding.positional_embedding"]


@pytest.mark.parametrize("variant,hidden,depth,heads,global_idx", [
    ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
    ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
    ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
])
def test_architecture_read_off_shapes(variant, hidden, depth, heads, global_idx):
    from transformers import SamConfig, SamModel, SamVisionConfig

    vision = SamVisionConfig(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                             global_attn_indexes=global_idx)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        official = hf_to_official(SamModel(SamConfig(vision_config=vision)).state_dict())
    assert official_variant(official) == variant
    config = config_from_official(official)
    v = config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (hidden, depth, heads)
    assert list(v.global_attn_indexes) == global_idx
    assert (v.window_size, v.image_size, v.patch_size, v.mlp_dim, v.output_channels) == (14, 1024, 16, 4 * hidden, 256)
    assert config.prompt_encoder_config.image_embedding_size == 64
    d = config.mask_decoder_config
    assert (d.hidden_size, d.num_hidden_layers, d.mlp_dim, d.iou_head_depth) == (256, 2, 2048, 3)


def test_pth_loads_into_identical_model(tmp_path):
    from transformers import SamModel

    config = tiny_config()
    official = _random_official(config, seed=3)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(official, path)

    model = model_from_checkpoint(path)
    # Every tensor arrives unchanged under its official name.
    loaded = hf_to_official(model.state_dict())
    assert set(loaded) == set(official)
    assert all(torch.equal(loaded[k], official[k]) for k in official)
    inferred = model.config.vision_config
    assert list(inferred.global_attn_indexes) == [1] and inferred.window_size == 4 and inferred.image_size == 128

    # Same outputs as a model built from the true config: the inferred architecture is the real one.
    reference = SamModel(config).eval()
    reference.load_state_dict(official_to_hf(official))
    pixels = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[[[30.0, 40.0], [90.0, 20.0]]]])
    labels = torch.tensor([[[1, 0]]])
    box = torch.tensor([[[10.0, 12.0, 100.0, 90.0]]])
    with torch.inference_mode():
        a = model(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=box)
        b = reference(pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=box)
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.iou_scores, b.iou_scores)

    # Through the segmenter registry: --segmenter-weights file.pth.
    samodel.clear_caches()
    seg = get_segmenter("sam_vit_b", weights=str(path))
    assert seg.sam.mean == samodel.SAM_MEAN
    out = seg.segment(np.random.default_rng(0).random((60, 80)).astype(np.float32),
                      [samseg.Prompt(1, np.array([[40.0, 30.0]]), np.zeros((0, 2)))])
    assert out[0].mask.shape == (60, 80)
    # A MedSAM .pth is fed [0, 1] intensities, as MedSAM's own inference does.
    medsam = tmp_path / "medsam_vit_b.pth"
    torch.save(official, medsam)
    assert get_segmenter("medsam_vit_b", weights=str(medsam)).sam.mean == samodel.MEDSAM_MEAN
    samodel.clear_caches()


class Payload:
    """An arbitrary pickled object: what ``weights_only=True`` refuses to unpickle."""


def test_bad_checkpoints_are_user_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    torch.save({"backbone.conv.weight": torch.zeros(2, 2)}, junk)
    with pytest.raises(MedshotError, match="not a Segment Anything checkpoint"):
        model_from_checkpoint(junk)

    pickled = tmp_path / "pickled.pth"
    torch.save({"x": Payload()}, pickled)
    with pytest.raises(MedshotError, match="cannot read checkpoint"):
        model_from_checkpoint(pickled)


def test_transformers_layout_file_loads_too(tmp_path):
    """A bare ``model.safetensors`` (transformers key names) also works as a checkpoint file."""
    from sam_tiny import save_tiny
    from transformers import SamModel

    folder = save_tiny(tmp_path / "tiny", seed=2)
    expected = SamModel.from_pretrained(folder).state_dict()
    got = model_from_checkpoint(folder / "model.safetensors").state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
