"""On the real evaluation data (skipped when ../shared/evaldata is absent): loose bars that a broken
pipeline cannot clear, measured on a few pairs so the suite stays quick."""

from __future__ import annotations

import numpy as np
from conftest import evaldata_task

import medshot
from medshot.data.annotations import read_landmarks
from medshot.data.read import read_image, read_label_map
from medshot.evaluation.baselines import run_baseline
from medshot.evaluation.metrics import dice, normalized_distance


def test_cephalometric_landmarks_within_clinical_bar():
    task = evaldata_task("xray_ceph_landmarks_hamedan")
    images = sorted((task / "images").glob("*.png"))
    template = medshot.Template.build(images[0], landmarks_file=task / "landmarks.csv")
    shot = medshot.OneShot(template)
    errors = []
    for image in images[1:3]:
        result = shot.localize(image)
        truth = read_landmarks(task / "landmarks.csv", result.image, image.name)
        assert [lm.name for lm in result.landmarks] == [lm.name for lm in truth]
        errors.append(normalized_distance(result.landmark_points, np.array([t.point for t in truth]),
                                          result.image.shape))
    errors = np.concatenate(errors)
    assert np.median(errors) < 0.03, np.median(errors)
    assert np.mean(errors < 0.05) > 0.8


def test_hippocampus_slices_beat_copying_the_template_mask():
    task = evaldata_task("mr_hippocampus_msd/slices2d")
    images = sorted((task / "images").glob("*.png"))
    template = medshot.Template.build(images[0], task / "masks" / images[0].name)
    shot = medshot.OneShot(template)
    ours, copied = [], []
    for image in images[1:4]:
        truth = read_label_map(task / "masks" / image.name, read_image(image))[0]
        for result, scores in ((shot.segment(image), ours), (run_baseline(shot, image, "identity", landmarks=False),
                                                             copied)):
            assert result.label_map.shape == truth.shape
            scores.append(np.mean([dice(result.label_map == k, truth == k) for k in (1, 2)]))
    assert np.mean(ours) > 0.6, ours
    assert np.mean(ours) > np.mean(copied), (ours, copied)
