"""The pixel classifier of batch mode (medshot.pipeline.classifier)."""

from __future__ import annotations

import numpy as np
import pytest

from medshot import from_array
from medshot.evaluation.metrics import dice
from medshot.pipeline.classifier import _samples, context_box, pixel_features, train_classifier
from medshot.pipeline.result import TargetResult

pytest.importorskip("sklearn")


def _disc_image(shape, centre, radius, seed, spacing=None):
    """A textured bright disc on a smooth darker background, and its truth."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    scale = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, scale)))
    truth = (distance <= radius).astype(np.uint8)
    array = 60 + 20 * grid[0] / shape[0] + rng.normal(0, 4, shape)
    array[truth == 1] = 150 + rng.normal(0, 15, int(truth.sum()))
    affine = np.diag([*(scale if spacing is not None else np.ones(len(shape))), *([1.0] * (4 - len(shape)))])
    return from_array(array.astype(np.float32), affine if spacing is not None else None), truth


def _result(image, label_map) -> TargetResult:
    return TargetResult(image=image, label_map=label_map.astype(np.uint8), scores={1: 0.9})


def _eroded(truth: np.ndarray, pixels: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(truth, iterations=pixels).astype(np.uint8)


@pytest.fixture(scope="module")
def batch2d():
    template = _disc_image((96, 112), (48, 50), 22, seed=0)
    targets = [_disc_image((96, 112), (44 + 3 * i, 52 - 2 * i), 18 + 2 * i, seed=1 + i) for i in range(4)]
    return template, targets


def test_an_undersegmented_boundary_moves_to_the_edge_the_batch_learned(batch2d):
    (template, truth), targets = batch2d
    # the pool's label maps are right; the target to refine lost 4 pixels all round
    pool = {i: _result(image, t) for i, (image, t) in enumerate(targets) if i != 2}
    model = train_classifier(template, truth, None, pool, width=0.10)
    image, target_truth = targets[2]
    before = _result(image, _eroded(target_truth, 4))
    after = model.refine(before, fold=0)
    assert dice(before.label_map, target_truth) < 0.85
    assert dice(after.label_map, target_truth) > 0.95
    assert after.evidence["classifier changed"] > 0
    assert before.label_map.sum() == _eroded(target_truth, 4).sum()  # the input is not changed


def test_a_right_label_map_stays_right(batch2d):
    """The template as its own target: the classifier does not move a boundary that is where it should be."""
    (template, truth), targets = batch2d
    pool = {i: _result(image, t) for i, (image, t) in enumerate(targets)}
    model = train_classifier(template, truth, None, pool, width=0.10)
    for fold in (0, 1):
        again = model.refine(_result(template, truth), fold)
        assert dice(again.label_map, truth) > 0.99


def test_each_fold_is_trained_without_its_own_pool_members(batch2d):
    (template, truth), targets = batch2d
    pool = {i: _result(image, t) for i, (image, t) in enumerate(targets)}
    model = train_classifier(template, truth, None, pool, width=0.10)
    alone = train_classifier(template, truth, None, {}, width=0.10, with_template_only=True)
    # the bootstrap draws as many samples (with repeats) as the forest was given
    given = [round(m.estimators_[0].tree_.weighted_n_node_samples[0]) for m in model.forests]
    own = round(alone.forests[0].estimators_[0].tree_.weighted_n_node_samples[0])
    sizes = {i: len(_samples(image, t, None, [0, 1], seed=0)[1]) for i, (image, t) in enumerate(targets)}
    assert min(sizes.values()) > 1000
    assert given[0] == own + sizes[1] + sizes[3]  # fold 0 (targets 0, 2) learns from targets 1 and 3
    assert given[1] == own + sizes[0] + sizes[2]


def test_a_fold_with_no_pool_member_to_learn_from_is_left_as_it_is(batch2d):
    (template, truth), targets = batch2d
    # the only pool member is in fold 0: fold 1's forest learns from it, fold 0's would see the template alone
    model = train_classifier(template, truth, None, {0: _result(*targets[0])}, width=0.10)
    assert model.forests[0] is None and model.forests[1] is not None
    image, target_truth = targets[2]
    eroded = _result(image, _eroded(target_truth, 4))
    assert model.refine(eroded, 0) is eroded
    assert dice(model.refine(eroded, 1).label_map, target_truth) > dice(eroded.label_map, target_truth)
    assert train_classifier(template, truth, None, {}, width=0.10).forests == [None, None]


def test_the_same_inputs_give_the_same_label_maps(batch2d):
    (template, truth), targets = batch2d
    pool = {i: _result(image, t) for i, (image, t) in enumerate(targets) if i != 1}
    image, target_truth = targets[1]
    eroded = _result(image, _eroded(target_truth, 3))
    maps = [train_classifier(template, truth, None, pool, width=0.10).refine(eroded, 1).label_map for _ in range(2)]
    assert np.array_equal(*maps)


def test_a_thick_slice_volume_is_refined_in_mm():
    from scipy import ndimage

    spacing = (1.25, 1.25, 7.7)
    template, truth = _disc_image((40, 40, 12), (20, 20, 6), 14.0 * 1.25, seed=3, spacing=spacing)
    assert template.spacing[2] == pytest.approx(7.7)
    target, target_truth = _disc_image((40, 40, 12), (21, 19, 6), 13.0 * 1.25, seed=4, spacing=spacing)
    pool = {i: _result(*_disc_image((40, 40, 12), (19 + i, 21, 6), (15.0 + i) * 1.25, seed=5 + i, spacing=spacing))
            for i in range(2)}
    model = train_classifier(template, truth, None, pool, width=0.10)
    in_plane = ndimage.generate_binary_structure(3, 1) & (np.arange(3) == 1)[None, None, :]
    before = _result(target, ndimage.binary_erosion(target_truth, in_plane, iterations=2))
    after = model.refine(before, fold=0)
    assert after.label_map.shape == target_truth.shape
    assert dice(before.label_map, target_truth) < 0.9
    assert dice(after.label_map, target_truth) > dice(before.label_map, target_truth) + 0.03
    assert dice(model.refine(_result(target, target_truth), 0).label_map, target_truth) > 0.97


def test_features_of_a_box_are_those_of_the_whole_image(batch2d):
    (template, truth), _ = batch2d
    box = context_box(truth)
    inner = (slice(box[0].start + 5, box[0].stop - 5), slice(box[1].start + 5, box[1].stop - 5))
    where = np.arange(0, (inner[0].stop - inner[0].start) * (inner[1].stop - inner[1].start), 37)
    part = pixel_features(template, None, inner, where)
    whole = (slice(0, truth.shape[0]), slice(0, truth.shape[1]))
    rows, cols = np.unravel_index(where, (inner[0].stop - inner[0].start, inner[1].stop - inner[1].start))
    flat = np.ravel_multi_index((rows + inner[0].start, cols + inner[1].start), truth.shape)
    np.testing.assert_allclose(part, pixel_features(template, None, whole, flat), rtol=1e-4, atol=1e-4)
