"""Overlays explain themselves: a legend with each label's name in its colour, landmark names; localize
writes a picture per target."""

from __future__ import annotations

import numpy as np

from medshot.viz import label_color, landmark_overlay, overlay


def test_overlay_legend_shows_each_present_label_in_its_colour():
    image = np.zeros((64, 80), np.float32)
    labels = np.zeros((64, 80), np.uint8)
    labels[10:20, 10:20], labels[30:40, 40:60] = 2, 5
    plain = overlay(image, labels, max_side=None)
    named = overlay(image, labels, max_side=None, label_names={2: "liver", 5: "spleen", 9: "absent"},
                    points=np.array([[5.0, 5.0]]), point_names=["apex"])
    assert named.shape[0] >= plain.shape[0] and named.shape[1] > plain.shape[1]
    legend = named[:, plain.shape[1]:]
    for label in (2, 5):  # each present label's swatch, drawn in its exact colour
        assert np.all(legend == label_color(label), axis=-1).sum() >= 50
    assert np.all(legend == label_color(9), axis=-1).sum() == 0  # absent labels are not listed
    assert np.all(legend == (255, 40, 40), axis=-1).sum() >= 50  # the landmark entry


def test_landmark_overlay_of_a_volume_has_one_row_per_landmark():
    vol = np.random.default_rng(0).normal(size=(40, 40, 30)).astype(np.float32)
    one = landmark_overlay(vol, np.array([[20.0, 20.0, 15.0]]), ["a"], np.array([1.0, 1.0, 2.0]))
    two = landmark_overlay(vol, np.array([[20.0, 20.0, 15.0], [5.0, 30.0, 3.0]]), ["a", "b"],
                           np.array([1.0, 1.0, 2.0]))
    assert two.shape[0] == 2 * one.shape[0] and two.shape[2] == 3
    assert np.all(two == label_color(2), axis=-1).any()  # the second landmark's dot and swatch


def test_localize_writes_an_overlay_per_target(tmp_path, template_files):
    from PIL import Image

    from medshot.cli import main

    image, _, csv = template_files
    assert main(["template", str(image), "--landmarks", str(csv), "--out", str(tmp_path / "t.json")]) == 0
    out = tmp_path / "out"
    assert main(["localize", "--template", str(tmp_path / "t.json"), "--out", str(out), str(image),
                 "--quiet"]) == 0
    pic = np.asarray(Image.open(out / "template_overlay.png"))
    assert pic.shape[1] > Image.open(image).size[0]  # the picture plus its legend of landmark names
