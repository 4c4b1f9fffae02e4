"""No confident wrong answer: scores see the final result, landmarks stay put where the image is flat.

Each test here failed on the code before issue 21: an empty mask scored 1.0 and ``ok``; a segmenter's
own estimate (the random walker's halved fallback score, SAM's) was dropped; a label too small for
the working grid got a constant 1.0; a landmark in a flat region of a real CT slice localized on the
very same image landed 193 pixels away; ``low_confidence`` rows had no reason.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medshot.core.feature_map import FeatureMap
from medshot.data.annotations import Landmark
from medshot.data.image import from_array
from medshot.data.template import Template
from medshot.evaluation.metrics import expected_calibration_error, failure_auc, reliability
from medshot.match.correspond import anchored_roi
from medshot.match.points import match_points
from medshot.pipeline import OneShot
from medshot.segment import Segmentation
from medshot.synthetic import make_phantom


def _template(case, labels=(1, 2), landmarks=True) -> Template:
    image = from_array(case.image)
    template = Template.from_image(
        image, labels={k: f"organ {k}" for k in labels},
        landmarks=[Landmark(f"p{i}", np.array([y, x])) for i, (x, y) in enumerate(case.landmarks_xy)]
        if landmarks else [])
    template.mask_path = "in-memory"  # type: ignore[assignment]
    template._mask = np.where(np.isin(case.mask, labels), case.mask, 0).astype(np.int32)
    return template


class _Fixed:
    """A segmenter that returns given masks and scores whatever the prompts (what a failing model does)."""

    name = "fixed"

    def __init__(self, masks: dict[int, np.ndarray], scores: dict[int, float | None]):
        self.masks, self.scores = masks, scores

    def segment(self, image, prompts):
        return [Segmentation(p.label, self.masks.get(p.label, np.zeros(image.shape, bool)),
                             self.scores.get(p.label)) for p in prompts]


@pytest.fixture(scope="module")
def case():
    return make_phantom((160, 176), seed=3)


def test_an_empty_mask_scores_zero_with_a_reason(case):
    empty = np.zeros(case.image.shape, bool)
    shot = OneShot(_template(case, landmarks=False), segmenter=_Fixed({1: empty, 2: case.mask == 2}, {}))
    result = shot.segment(case.image)
    assert result.scores[1] == 0.0 and "empty" in result.reasons[1]
    assert result.scores[2] > 0.5 and result.reasons[2] == ""


def test_the_segmenters_own_estimate_counts(case):
    masks = {1: case.mask == 1, 2: case.mask == 2}
    plain = OneShot(_template(case, landmarks=False), segmenter=_Fixed(masks, {})).segment(case.image)
    halved = OneShot(_template(case, landmarks=False), segmenter=_Fixed(masks, {1: 0.5, 2: 0.1})).segment(case.image)
    assert halved.scores[1] == pytest.approx(0.5 * plain.scores[1])
    assert halved.scores[2] == pytest.approx(0.1 * plain.scores[2])
    assert "own estimate" in halved.reasons[2]


def test_scores_judge_the_returned_mask_not_the_carried_one(case):
    """A segmenter that returns a region elsewhere, or a sliver, is flagged though the placement is perfect."""
    wrong = np.roll(case.mask == 1, 40, axis=1)
    sliver = np.zeros(case.image.shape, bool)
    sliver[tuple(np.argwhere(case.mask == 2)[:4].T)] = True
    result = OneShot(_template(case, landmarks=False),
                     segmenter=_Fixed({1: wrong, 2: sliver}, {})).segment(case.image)
    assert result.scores[1] < 0.5 and result.scores[2] < 0.5
    assert result.reasons[1] and "smaller" in result.reasons[2]


def test_a_tiny_label_has_evidence_and_is_not_ok_on_noise(case):
    mask = case.mask.copy()
    mask[20, 30] = 3  # one pixel: thinner than a working pixel
    template = _template(case, labels=(1, 2, 3), landmarks=False)
    template._mask = mask.astype(np.int32)
    shot = OneShot(template)
    itself = shot.segment(case.image)
    assert 3 in itself.evidence and itself.label_map[20, 30] == 3
    noise = np.random.default_rng(0).random(case.image.shape).astype(np.float32)
    on_noise = shot.segment(noise)
    assert 3 in on_noise.evidence
    assert on_noise.scores[3] < 0.5 and on_noise.reasons[3]


def test_low_confidence_rows_say_why(tmp_path, case):
    from medshot.cli.main import main
    from medshot.data.write import save_png

    save_png(tmp_path / "t.png", (case.image * 255).astype(np.uint8))
    save_png(tmp_path / "t_mask.png", case.mask)
    save_png(tmp_path / "noise.png", (np.random.default_rng(1).random(case.image.shape) * 255).astype(np.uint8))
    assert main(["template", str(tmp_path / "t.png"), "--mask", str(tmp_path / "t_mask.png"),
                 "--out", str(tmp_path / "t.json")]) == 0
    assert main(["segment", "--template", str(tmp_path / "t.json"), "--out", str(tmp_path / "out"), "--quiet",
                 str(tmp_path / "noise.png"), str(tmp_path / "t.png")]) == 0
    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    flagged = [r for r in rows if r["status"] != "ok"]
    assert flagged, rows  # the noise image's labels
    assert all(r["reason"] for r in flagged)
    assert all(r["reason"] == "" for r in rows if r["status"] == "ok")
    assert {r["status"] for r in rows if r["target"].endswith("t.png")} == {"ok"}


def test_a_landmark_in_a_flat_region_stays_put():
    """pydicom's own CT head slice, a landmark at the centre of the brain, localized in the same image."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from medshot.data.read import read_image

    path = get_testdata_file("693_J2KI.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's 693_J2KI.dcm is not installed")
    image = read_image(path)
    centre = (np.array(image.shape, float) - 1) / 2
    shot = OneShot(Template.from_image(image, landmarks=[Landmark("brain centre", centre)]))
    found = shot.localize(image).landmarks[0]
    assert np.linalg.norm(found.point - centre) <= 1.0


def test_rematching_keeps_the_carried_point_without_distinctive_evidence():
    rng = np.random.default_rng(0)
    flat = np.tile(rng.normal(size=(8, 1, 1)), (1, 40, 40)).astype(np.float32)  # one descriptor everywhere
    flat += 1e-3 * rng.normal(size=flat.shape).astype(np.float32)  # and a little noise
    fmap = FeatureMap(flat, (1.0, 1.0), (0.0, 0.0), (40, 40))
    carried = np.array([[20.3, 17.8]])
    m = match_points(fmap, fmap, np.array([[20.0, 20.0]]), initial=carried, radius=8.0, prior_sigma=4.0)
    np.testing.assert_allclose(m.points, carried)
    # a distinctive spot: the point moves to it
    textured = rng.normal(size=(8, 40, 40)).astype(np.float32)
    tmap = FeatureMap(textured, (1.0, 1.0), (0.0, 0.0), (40, 40))
    m = match_points(tmap, tmap, np.array([[20.0, 20.0]]), initial=carried, radius=8.0, prior_sigma=4.0,
                     patch_radius=2.0)
    np.testing.assert_allclose(m.points, [[20.0, 20.0]], atol=0.3)


def test_a_region_of_interest_without_content_is_grown():
    informative = np.zeros((60, 60))
    informative[:, :5] = 1.0  # the only structure: a strip at the edge
    roi = np.zeros((60, 60), bool)
    roi[28:32, 28:32] = True
    grown = anchored_roi(roi, informative, 0.05)
    assert grown[28:32, 28:32].all() and informative[grown].sum() >= 0.05 * informative.sum()
    rich = np.ones((60, 60))
    np.testing.assert_array_equal(anchored_roi(roi, rich, 0.001), roi)  # enough content: unchanged


def test_calibration_measures():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    right = rng.random(20000) < p  # calibrated by construction
    assert expected_calibration_error(p, right) < 0.02
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000, bool)) == pytest.approx(0.9)
    table = reliability(p, right, bins=5)
    assert len(table) == 5 and all(abs(a - b) < 0.03 for a, b, _ in table)
    assert failure_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False])) == 1.0
    assert np.isnan(failure_auc(np.array([0.5]), np.array([True])))
