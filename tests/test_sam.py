"""Segment Anything segmenter and backbone on tiny random SAM models saved with save_pretrained.

What matters here is plumbing, not mask quality (the weights are random): prompts reach the prompt
encoder at the right coordinates with the right labels, masks come back at the target's shape, and
the image encoder runs once per target however many labels, iterations and backbone calls.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402
from sam_tiny import IMAGE_SIZE, PATCH, save_tiny  # noqa: E402

from medshot.features import get_backbone  # noqa: E402
from medshot.models import sam as samodel  # noqa: E402
from medshot.models.sam import SamFrame  # noqa: E402
from medshot.segment import Prompt, Segmentation, get_segmenter  # noqa: E402
from medshot.segment import sam as samseg  # noqa: E402
from medshot.segment.base import resolve_overlaps  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models on a shared 2-core machine: one thread is ~30x faster than contended multi-threading.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture(autouse=True)
def _fresh_caches():
    samodel.clear_caches()
    yield
    samodel.clear_caches()


def _count_calls(module) -> list:
    calls: list = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def _image(shape=(192, 224), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _disk(shape, cx, cy, r) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# -- geometry -------------------------------------------------------------------------------------


def test_frame_maps_pixel_centres_exactly():
    frame = SamFrame.for_image((100, 200), 1024)
    assert frame.resized == (512, 1024)
    xy = np.array([[0.0, 0.0], [199.0, 99.0], [-0.5, -0.5], [199.5, 99.5]])
    sam = frame.to_sam(xy)
    # Pixel centres scale about the image corner: (x + 0.5) * 1024 / 200 - 0.5.
    np.testing.assert_allclose(sam[0], [2.06, 2.06])
    np.testing.assert_allclose(sam[1], [1020.94, 508.94])
    # The image's outer edges land on the resized image's outer edges (no half-pixel drift).
    np.testing.assert_allclose(sam[2], [-0.5, -0.5])
    np.testing.assert_allclose(sam[3], [1023.5, 511.5])
    np.testing.assert_allclose(frame.from_sam(sam), xy, atol=1e-12)
    # Odd sizes: W' and H' are rounded, each axis keeps its own exact scale.
    odd = SamFrame.for_image((37, 53), 128)
    assert odd.resized == (89, 128)
    np.testing.assert_allclose(odd.scale_xy, [128 / 53, 89 / 37])
    np.testing.assert_allclose(odd.to_sam([[52.5, 36.5]]), [[127.5, 88.5]])


def test_lowres_mask_roundtrip_and_padding():
    frame = SamFrame.for_image((150, 97), IMAGE_SIZE)
    mask = np.zeros((150, 97), bool)
    mask[30:110, 20:70] = True
    low = frame.mask_to_lowres(mask, 32)
    assert tuple(low.shape) == (1, 1, 32, 32)
    # Everything right of the resized image is padding: background logits there.
    w_low = frame.resized[1] * 32 / IMAGE_SIZE
    assert torch.all(low[..., :, int(np.ceil(w_low)):] < 0)
    assert low.max() > 0
    back = frame.lowres_to_image(low[0]) > 0
    assert back.shape == (1, 150, 97)
    iou = (back[0] & mask).sum() / (back[0] | mask).sum()
    assert iou > 0.9


def test_pixel_values_normalise_resize_and_pad(tiny_dir):
    seg = get_segmenter("sam_vit_b", weights=str(tiny_dir))
    pixels, frame = seg.sam.pixel_values(np.full((64, 32), 0.5, np.float32))
    assert tuple(pixels.shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert frame.resized == (IMAGE_SIZE, IMAGE_SIZE // 2)
    expected = (127.5 - np.array(samodel.SAM_MEAN)) / np.array(samodel.SAM_STD)
    np.testing.assert_allclose(pixels[0, :, :, : IMAGE_SIZE // 2].mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)
    assert torch.all(pixels[0, :, :, IMAGE_SIZE // 2:] == 0)


def test_preprocessor_config_sets_normalisation(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        '{"do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,'
        ' "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}')
    mean, std = samodel._normalization_for("medsam_vit_b", tmp_path)
    np.testing.assert_allclose(mean, 0.0)
    np.testing.assert_allclose(std, 255.0)
    assert samodel._normalization_for("sam_vit_b", tmp_path / "nothing") == (samodel.SAM_MEAN, samodel.SAM_STD)


# -- prompts --------------------------------------------------------------------------------------


def test_prompts_reach_prompt_encoder_in_sam_frame(tiny_dir):
    seg = get_segmenter("sam_vit_b", weights=str(tiny_dir), box_source="points", use_mask_prompt=True)
    seen = []
    seg.model.prompt_encoder.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    H, W = 192, 224
    pos = np.array([[10.0, 20.0], [130.0, 40.0]])
    neg = np.array([[200.0, 150.0]])
    box = np.array([5.0, 6.0, 170.0, 80.0])
    coarse = _disk((H, W), 70, 45, 30)
    # medshot's prompts are array order (row, column); SAM's are (x, y)
    seg.segment(_image((H, W)), [Prompt(3, pos[:, ::-1], neg[:, ::-1], box=box[[1, 0, 3, 2]], mask=coarse)])
    assert len(seen) == 1
    kw = seen[0]
    # Longest side 224 -> 128 (the tiny model's 1024): W' = 128, H' = round(192 * 128 / 224) = 110.
    sx, sy = 128 / 224, 110 / 192
    expected = np.array([[(x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5] for x, y in np.vstack([pos, neg])])
    np.testing.assert_allclose(kw["input_points"][0, 0].numpy(), expected, rtol=1e-6)
    assert kw["input_labels"][0, 0].tolist() == [1, 1, 0]
    expected_box = [(5.5) * sx - 0.5, 6.5 * sy - 0.5, 170.5 * sx - 0.5, 80.5 * sy - 0.5]
    np.testing.assert_allclose(kw["input_boxes"][0, 0].numpy(), expected_box, rtol=1e-6)
    # What the positional encoding sees, (p + 0.5) / 128, is the pixel centre's fraction of the padded square.
    frac = (kw["input_points"][0, 0].numpy() + 0.5) / IMAGE_SIZE
    np.testing.assert_allclose(frac[:, 0], (np.vstack([pos, neg])[:, 0] + 0.5) / W, rtol=1e-6)
    np.testing.assert_allclose(frac[:, 1], (np.vstack([pos, neg])[:, 1] + 0.5) / H * (110 / 128), rtol=1e-6)
    # The coarse mask arrives as low-resolution logits (4x the embedding grid), positive at its centre.
    masks = kw["input_masks"]
    assert tuple(masks.shape) == (1, 1, 32, 32)
    cx, cy = (SamFrame.for_image((H, W), IMAGE_SIZE).to_sam([[70, 45]])[0] + 0.5) / 4
    assert masks[0, 0, int(cy), int(cx)] > 0 and masks[0, 0, 31, 0] < 0


def test_box_from_coarse_mask_by_default_and_no_prompt_no_mask(tiny_dir):
    seg = get_segmenter("sam_vit_b", weights=str(tiny_dir))
    seen = []
    seg.model.prompt_encoder.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    H, W = 128, 128
    coarse = np.zeros((H, W), bool)
    coarse[40:61, 30:81] = True
    empty = Prompt(2, np.zeros((0, 2)), np.array([[5.0, 5.0]]))
    segs = seg.segment(_image((H, W)), [Prompt(1, np.zeros((0, 2)), np.zeros((0, 2)), mask=coarse), empty])
    # Label 2 has nothing to go on: no decoder call, an empty mask, score 0.
    assert len(seen) == 1
    assert not segs[1].mask.any() and segs[1].score == 0.0
    np.testing.assert_allclose(seen[0]["input_boxes"][0, 0].numpy(), [30, 40, 80, 60])  # 128 -> 128: identity
    # Without positive points the mask's most interior pixel becomes the click.
    np.testing.assert_allclose(seen[0]["input_points"][0, 0].numpy(), [[55, 50]], atol=1)
    assert seen[0]["input_labels"][0, 0].tolist() == [1]


def test_masks_have_target_shape_and_scores_in_range(tiny_dir):
    seg = get_segmenter("sam_vit_b", weights=str(tiny_dir), iterate=True)
    H, W = 150, 97
    prompts = [Prompt(1, np.array([[40.0, 30.0]]), np.array([[140.0, 80.0]]), mask=_disk((H, W), 30, 40, 15)),
               Prompt(2, np.array([[100.0, 70.0], [110.0, 60.0]]), np.zeros((0, 2)))]
    segs = seg.segment(_image((H, W)), prompts)
    assert [s.label for s in segs] == [1, 2]
    for s in segs:
        assert s.mask.shape == (H, W) and s.mask.dtype == bool
        assert 0.0 <= s.score <= 1.0
    assert not (segs[0].mask & segs[1].mask).any()


def test_choice_uses_agreement_with_coarse_mask():
    seg = samseg.SamSegmenter.__new__(samseg.SamSegmenter)
    full = np.full((3, 10, 10), -1.0)
    full[0, :5] = 1.0  # top half
    full[1, :, :5] = 1.0  # left half
    full[2] = 1.0  # everything
    coarse = np.zeros((10, 10), bool)
    coarse[:, :5] = True
    dec = samseg._Decoded(None, full.copy(), np.array([0.9, 0.5, 0.6]))
    assert seg._choose(dec, None).best == 0  # predicted IoU alone
    dec = seg._choose(samseg._Decoded(None, full.copy(), np.array([0.9, 0.5, 0.6])), coarse)
    assert dec.best == 1 and dec.choice == pytest.approx(0.75)


def test_overlaps_go_to_the_larger_logit():
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 1:] = True
    la, lb = np.where(a, 1.0, -1.0), np.where(b, 2.0, -1.0)
    segs = resolve_overlaps([(Segmentation(1, a.copy(), 0.5), la), (Segmentation(2, b.copy(), 0.5), lb)])
    assert segs[0].mask[:, 0].all() and not segs[0].mask[:, 1:].any()
    assert segs[1].mask[:, 1:].all()


# -- one encoder pass per target ------------------------------------------------------------------


def test_one_encoder_pass_for_all_labels_and_iterations(tiny_dir):
    seg = get_segmenter("sam_vit_b", weights=str(tiny_dir), use_mask_prompt=True, iterate=True)
    encoder = _count_calls(seg.model.vision_encoder)
    decoder = _count_calls(seg.model.mask_decoder)
    H, W = 120, 140
    image = _image((H, W))
    prompts = [Prompt(k, np.array([[20.0 + 30 * k, 50.0]]), np.array([[5.0, 5.0]]), mask=_disk((H, W), 20 + 30 * k,
                                                                                             50, 10))
               for k in range(1, 4)]
    seg.segment(image, prompts)
    assert len(encoder) == 1
    assert len(decoder) == 6  # three labels, two decoder calls each (iterate)
    seg.segment(image.copy(), prompts)  # same pixels, another array: still cached
    assert len(encoder) == 1
    seg.segment(_image((H, W), seed=5), prompts)
    assert len(encoder) == 2


def test_backbone_and_segmenter_share_model_and_encoder_pass(tiny_dir):
    backbone = get_backbone("sam_vit_b", weights=str(tiny_dir))
    seg = get_segmenter("sam_vit_b", weights=str(tiny_dir))
    assert backbone.full_resolution_input is True
    assert backbone.model is seg.model
    encoder = _count_calls(seg.model.vision_encoder)
    H, W = 192, 224
    image = _image((H, W))
    fmap = backbone(image)
    seg.segment(image, [Prompt(1, np.array([[100.0, 90.0]]), np.zeros((0, 2)))])
    assert len(encoder) == 1
    # Features: the neck's 32 channels on the cells covering the image (110 x 128 resized -> 7 x 8 cells),
    # unit length, each cell centred on its 16 x 16 patch taken back to the original pixels.
    assert fmap.data.shape == (32, 7, 8) and fmap.image_shape == (H, W)
    np.testing.assert_allclose(np.linalg.norm(fmap.data, axis=0), 1.0, rtol=1e-5)
    sy, sx = PATCH * H / 110, PATCH * W / 128
    assert fmap.stride == pytest.approx((sy, sx))
    assert fmap.offset == pytest.approx((sy / 2 - 0.5, sx / 2 - 0.5))
    frame = SamFrame.for_image((H, W), IMAGE_SIZE)
    centre = frame.to_sam(fmap.grid_to_pixel([[3, 2]])[:, ::-1])[0]  # cell (row 3, col 2); SAM takes (x, y)
    np.testing.assert_allclose(centre, [2 * PATCH + 7.5, 3 * PATCH + 7.5])


def test_oneshot_runs_one_encoder_pass_per_target(tiny_dir, template_files, phantom):
    from medshot.data.template import Template
    from medshot.pipeline import OneShot
    from medshot.synthetic import random_warp

    image_path, mask_path, _ = template_files
    template = Template.build(image_path, mask_path)
    shot = OneShot(template, backbone="sam_vit_b", segmenter=get_segmenter("sam_vit_b", weights=str(tiny_dir)),
                   backbone_options={"weights": str(tiny_dir)}, work_size=96)
    encoder = _count_calls(shot.segmenter.model.vision_encoder)
    target, _ = random_warp(phantom, seed=2)
    result = shot.segment(target.image)
    assert len(encoder) == 1
    assert result.label_map.shape == target.image.shape
    assert set(result.scores) == {1, 2}


# -- errors and optional dependencies -------------------------------------------------------------


def test_missing_weights_file_names_checkpoint_and_offline_fallback(tmp_path):
    from medshot.core.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError) as info:
        get_segmenter("sam_vit_b", weights=str(tmp_path / "sam_vit_b_01ec64.pth"))
    text = str(info.value)
    assert "does not exist" in text and "facebook/sam-vit-base" in text and "hf download" in text
    assert "sam_vit_b_01ec64.pth" in text and "--segmenter classical" in text


def test_registry_imports_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from medshot.core.errors import MedshotError
        from medshot.features import backbone_names, get_backbone
        from medshot.segment import get_segmenter, segmenter_names, segmenter_status
        assert {"sam_vit_b", "sam_vit_l", "sam_vit_h", "slimsam_50", "medsam_vit_b"} <= set(segmenter_names())
        assert segmenter_names()[0] == "classical"
        assert {"sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(backbone_names())
        ok, why = segmenter_status("sam_vit_b")
        assert not ok and "torch" in why, why
        for make in (get_segmenter, get_backbone):
            try:
                make("sam_vit_b")
            except MedshotError as exc:
                assert "torch" in str(exc) and "classical" in str(exc)
            else:
                raise AssertionError("expected a MedshotError")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
