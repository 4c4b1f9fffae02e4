"""End to end on warped phantoms with exactly known truth (affine + smooth deformation)."""

from __future__ import annotations

import numpy as np
import pytest

import medshot
from medshot.data.write import save_png
from medshot.evaluation.metrics import dice_per_label, normalized_distance
from medshot.synthetic import random_warp


@pytest.fixture(scope="module")
def shot(tmp_path_factory, phantom):
    d = tmp_path_factory.mktemp("tmpl")
    save_png(d / "t.png", (phantom.image * 255).astype(np.uint8))
    save_png(d / "m.png", phantom.mask)
    (d / "l.csv").write_text("name,x,y\n" + "".join(f"p{i},{x},{y}\n" for i, (x, y) in enumerate(phantom.landmarks_xy)))
    template = medshot.Template.build(d / "t.png", d / "m.png", d / "l.csv")
    return medshot.OneShot(template)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_warped_phantom_landmarks_and_masks(shot, phantom, seed):
    # Rotation up to 15 deg, scale 0.77-1.3, shift up to 12 % of the side, smooth deformation 2 %.
    target, _ = random_warp(phantom, seed=seed)
    result = shot.run(target.image)
    ned = normalized_distance(result.landmark_points, target.landmarks_xy[:, ::-1], target.image.shape)
    assert ned.max() < 0.02, ned
    dice = dice_per_label(result.label_map, target.mask)
    assert min(dice.values()) >= 0.9, dice
    assert result.label_map.shape == target.image.shape
    assert all(0.0 <= lm.confidence <= 1.0 for lm in result.landmarks)


def test_structure_elsewhere_in_a_larger_field_of_view(shot, phantom):
    # The target is a bigger canvas with the anatomy shifted off-centre and scaled up by ~30 %.
    target, _ = random_warp(phantom, seed=11, out_shape=(260, 300), scale_range=(1.25, 1.3), max_shift=0.15,
                            max_rotation=15)
    result = shot.run(target.image)
    ned = normalized_distance(result.landmark_points, target.landmarks_xy[:, ::-1], target.image.shape)
    assert ned.max() < 0.02, ned
    assert min(dice_per_label(result.label_map, target.mask).values()) >= 0.9


def test_identical_image_is_found_in_place(shot, phantom):
    result = shot.run(phantom.image)
    ned = normalized_distance(result.landmark_points, phantom.landmarks_xy[:, ::-1], phantom.image.shape)
    assert ned.max() < 0.005
    assert min(dice_per_label(result.label_map, phantom.mask).values()) > 0.95


def test_template_features_are_computed_once(phantom, monkeypatch):
    calls = []
    backbone = medshot.get_backbone("classical")

    class Counting:
        name = "counting"

        def __call__(self, image):
            calls.append(image.shape)
            return backbone(image)

    template = medshot.Template.from_image(medshot.from_array(phantom.image),
                                           landmarks=[medshot.Landmark("a", phantom.landmarks_xy[0][::-1])])
    shot = medshot.OneShot(template, backbone=Counting())
    # The template's working image once, then once per orientation of the pose bank; all of it up front.
    assert calls[0] == phantom.image.shape
    assert len(calls) == 1 + len(shot._first.side.bank.angles)
    before = len(calls)
    for seed in (1, 2):
        shot.localize(random_warp(phantom, seed=seed)[0].image)
    assert len(calls) == before + 2  # one descriptor pass per target


def test_a_mask_without_named_labels_segments_every_label(shot, phantom, tmp_path):
    # a hand-written template JSON may give a mask and no "labels": every non-zero value is a label
    template = medshot.Template.from_image(shot.template.image, mask_path=shot.template.mask_path)
    result = medshot.OneShot(template).segment(random_warp(phantom, seed=5)[0].image)
    assert set(np.unique(result.label_map)) - {0} == set(np.unique(phantom.mask)) - {0}
    assert set(result.scores) == set(np.unique(phantom.mask)) - {0}


def test_an_rgb_array_is_an_image_and_a_volume_array_is_refused(shot, phantom):
    rgb = np.repeat(phantom.image[..., None], 3, axis=2)
    assert shot.segment(rgb).label_map.shape == phantom.image.shape
    with pytest.raises(medshot.MedshotError, match="volume"):
        shot.segment(np.repeat(phantom.image[..., None], 7, axis=2))
