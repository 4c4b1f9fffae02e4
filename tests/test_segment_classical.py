"""The weights-free segmenter: no crash on degenerate prompts, and a carried mask when it cannot help."""

from __future__ import annotations

import numpy as np
import pytest

from medshot.segment import Prompt, get_segmenter
from medshot.segment.classical import RandomWalkerSegmenter


def _one_pixel_prompt(shape=(64, 64)) -> Prompt:
    # What OpenKBP slice pt_22 -> pt_20 gave the old pipeline: the brainstem carried to one pixel, with
    # prompt points around it, so the seeds leave no pixel undecided.
    mask = np.zeros(shape, bool)
    mask[30, 30] = True
    pos = np.array([[30.0, 30.0], [31.0, 30.0], [30.0, 31.0]])
    neg = np.array([[25.0, 25.0], [36.0, 25.0], [25.0, 36.0], [36.0, 36.0]])
    return Prompt(1, pos, neg, mask=mask)


@pytest.mark.parametrize("min_band_px", [0.5, 2.0])
def test_nothing_left_to_decide_does_not_crash(min_band_px):
    # scikit-image's random_walker returns boolean seed masks (label planes on the last axis) when every
    # unlabelled pixel is isolated; that used to raise "Input image dtype is bool" from the resize.
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    seg = RandomWalkerSegmenter(min_band_px=min_band_px).segment(image, [_one_pixel_prompt()])[0]
    assert seg.mask.shape == image.shape and seg.mask.dtype == bool
    assert seg.mask[30, 30]  # the structure is kept where it was carried
    assert seg.mask.sum() < 50


def test_a_failing_label_keeps_its_carried_mask_with_a_lower_score(monkeypatch):
    image = np.zeros((40, 40), np.float32)
    image[10:20, 10:20] = 1.0
    carried = np.zeros((40, 40), bool)
    carried[10:20, 10:20] = True
    segmenter = RandomWalkerSegmenter()
    ok = segmenter.segment(image, [Prompt(1, np.array([[15.0, 15.0]]), np.zeros((0, 2)), mask=carried)])[0]

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr("medshot.segment.classical.random_walker", broken)
    with pytest.warns(RuntimeWarning, match="kept the carried mask"):
        fallback = segmenter.segment(image, [Prompt(1, np.array([[15.0, 15.0]]), np.zeros((0, 2)), mask=carried)])[0]
    assert np.array_equal(fallback.mask, carried)
    assert 0 < fallback.score < ok.score


def test_default_keeps_carried_masks_and_grows_point_only_prompts():
    image = np.zeros((40, 40), np.float32)
    image[10:20, 10:20] = 1.0
    mask = np.zeros((40, 40), bool)
    mask[25:28, 25:30] = True
    points_only = Prompt(1, np.array([[14.0, 14.0], [16.0, 15.0]]), np.array([[30.0, 5.0]]))
    segs = get_segmenter("classical").segment(image, [points_only, Prompt(3, np.zeros((0, 2)), np.zeros((0, 2)),
                                                                       mask=mask)])
    assert [s.label for s in segs] == [1, 3]
    assert np.array_equal(segs[1].mask, mask)
    grown = segs[0].mask
    assert grown[12:18, 12:18].all() and grown.sum() < 200  # the bright square, not the background
