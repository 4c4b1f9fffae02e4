"""The default method finds the structure at any in-plane turn, at half and twice the size, anywhere in a
larger field of view and behind an ultrasound-like frame (fan edges, burnt-in text, calibration ticks);
where the structure is absent it says so with a low score."""

from __future__ import annotations

import numpy as np
import pytest

import medshot
from medshot.data.write import save_png
from medshot.evaluation.metrics import dice_per_label, normalized_distance
from medshot.synthetic import make_phantom, place, ultrasound_frame

CASES = {
    "turned 90 deg": dict(angle_deg=90, out_shape=(240, 240)),
    "turned 180 deg": dict(angle_deg=180, out_shape=(224, 240)),
    "half the size": dict(scale=0.5, out_shape=(192, 224)),
    "twice the size": dict(scale=2.0, out_shape=(440, 480)),
    "corner of a larger field of view": dict(angle_deg=-30, out_shape=(420, 460), center_xy=(125, 115)),
}


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    phantom = make_phantom()
    d = tmp_path_factory.mktemp("pose")
    save_png(d / "t.png", (phantom.image * 255).astype(np.uint8))
    save_png(d / "m.png", phantom.mask)
    (d / "l.csv").write_text("name,x,y\n" + "".join(f"p{i},{x},{y}\n" for i, (x, y) in enumerate(phantom.landmarks_xy)))
    return medshot.OneShot(medshot.Template.build(d / "t.png", d / "m.png", d / "l.csv"))


def _check(shot, target):
    result = shot.run(target.image)
    ned = normalized_distance(result.landmark_points, target.landmarks_xy[:, ::-1], target.image.shape)
    dice = dice_per_label(result.label_map, target.mask)
    assert ned.max() < 0.02, (ned, result.correspondence)
    assert min(dice.values()) >= 0.9, (dice, result.correspondence)
    return result


@pytest.mark.parametrize("name", list(CASES))
def test_pose(shot, name):
    _check(shot, place(make_phantom(), seed=1, **CASES[name]))


def test_behind_an_ultrasound_frame(shot):
    target = ultrasound_frame(place(make_phantom(), angle_deg=60, scale=0.8, out_shape=(300, 360),
                                    center_xy=(180, 170), seed=2))
    _check(shot, target)


def test_absent_structure_gets_a_low_score(shot):
    # The frame alone: speckle, fan edges, text and ticks, but no phantom in it.
    empty = medshot.synthetic.Case(np.zeros((300, 360), np.float32), np.zeros((300, 360), np.uint8), np.zeros((0, 2)))
    target = ultrasound_frame(empty)
    present = shot.run(place(make_phantom(), angle_deg=20, seed=3).image)
    absent = shot.run(target.image)
    assert absent.label_map.shape == target.image.shape
    assert max(absent.scores.values()) < medshot.pipeline.LOW_CONFIDENCE_SCORE
    assert min(present.scores.values()) > max(absent.scores.values())
    assert max(lm.confidence for lm in absent.landmarks) < min(lm.confidence for lm in present.landmarks)
