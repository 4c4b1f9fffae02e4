"""Metrics of medshot.evaluation.metrics in 2D and 3D against closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest

from medshot.evaluation.metrics import (
    dice,
    dice_per_label,
    hd95,
    normalized_distance,
    point_distance,
    surface_distances,
)


def _plate(shape, axis: int, index: int, lo: int = 2, hi: int = 10) -> np.ndarray:
    """A one-voxel-thick square plate across ``axis`` at ``index`` (every voxel of it is boundary)."""
    m = np.zeros(shape, bool)
    sl = [slice(lo, hi)] * len(shape)
    sl[axis] = slice(index, index + 1)
    m[tuple(sl)] = True
    return m


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_of_parallel_plates_is_the_gap_times_that_axis_spacing(axis):
    # Each element of one plate is nearest to the element straight across: every surface distance
    # is gap * spacing[axis] (smaller than any in-plane step here), so HD95 is exactly that.
    spacing = (0.7, 1.3, 3.0)
    gap = 2
    a, b = _plate((14, 14, 14), axis, 5), _plate((14, 14, 14), axis, 5 + gap)
    assert hd95(a, b) == pytest.approx(gap)
    assert hd95(a, b, spacing) == pytest.approx(gap * spacing[axis])
    assert hd95(b, a, spacing) == pytest.approx(gap * spacing[axis])
    d = surface_distances(a, b, spacing)
    assert len(d) == 2 * 8 * 8 and np.allclose(d, gap * spacing[axis])


def test_hd95_edge_cases_and_spacing_length():
    a = _plate((8, 8, 8), 0, 3, 1, 6)
    empty = np.zeros_like(a)
    assert hd95(a, a, (1.0, 2.0, 3.0)) == 0.0
    assert hd95(empty, empty) == 0.0
    assert hd95(a, empty) == float("inf") and hd95(empty, a) == float("inf")
    with pytest.raises(ValueError, match="3 values"):
        hd95(a, _plate((8, 8, 8), 0, 5, 1, 6), (1.0, 2.0))


def test_hd95_of_a_shifted_box_in_2d_and_3d():
    # A box shifted by one element along the first axis: its moved faces are 1 element away and the
    # side faces 0 or 1 away; the 95th percentile is the shift, scaled by the first axis' spacing.
    for shape in ((20, 20), (16, 16, 16)):
        t = np.zeros(shape, bool)
        t[tuple(slice(4, 12) for _ in shape)] = True
        p = np.roll(t, 1, axis=0)
        spacing = (2.5,) + (0.5,) * (len(shape) - 1)
        assert hd95(p, t) == pytest.approx(1.0)
        assert hd95(p, t, spacing) == pytest.approx(2.5)


def test_dice_of_shifted_boxes_in_3d():
    t = np.zeros((20, 20, 20), np.uint8)
    t[2:12, 3:9, 4:8] = 1
    t[14:18, 10:16, 10:18] = 2
    p = np.roll(t, 3, axis=2)
    d = dice_per_label(p, t)
    assert d[1] == pytest.approx(1 / 4)  # 4 slices deep, shifted by 3: 1 of 4 overlaps
    assert d[2] == pytest.approx(5 / 8)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice_per_label(p[:-1], t)


def test_point_distance_and_ned_in_3d():
    pred = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    true = np.zeros((2, 3))
    spacing = (2.0, 1.0, 0.5)
    np.testing.assert_allclose(point_distance(pred, true, spacing), [np.sqrt(4 + 4 + 2.25), 0.0])
    np.testing.assert_allclose(point_distance(pred, true), [np.sqrt(14), 0.0])
    assert normalized_distance(pred[0], true[0], (10, 20, 20)) == pytest.approx(np.sqrt(14) / 30)
    # two axes: exactly np.hypot, as the 2D distance in mm always was
    assert point_distance(np.array([3.0, 4.0]), np.zeros(2), (0.5, 0.25)) == np.hypot(1.5, 1.0)
