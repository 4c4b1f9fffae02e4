"""Speed-ups that must leave results exactly as they were (issue 20): caches and work done once."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medshot.core.geometry import grid_coords, l2_normalize, resize_image, rotation_2d
from medshot.features.classical import classical_features
from medshot.match import search as search_module
from medshot.match.correspond import CorrespondOptions, TemplateSide, correspond, deform_verified
from medshot.match.refine import TargetLevel
from medshot.match.search import SearchOptions, build_bank, search
from medshot.synthetic import make_phantom


def _describe(image, shape):
    return classical_features(resize_image(image, shape))


def _unit(image):
    return l2_normalize(classical_features(image), axis=0)


def _target(template, shape, shift):
    truth = rotation_2d(30.0, 1.1, np.array(template.shape) / 2)
    truth[:2, 2] += shift
    return ndimage.map_coordinates(template, grid_coords(np.linalg.inv(truth), shape), order=1, cval=0)


def _poses(poses):
    return [(p.score, p.angle, p.scale, p.matrix.tolist()) for p in poses]


def test_cached_spectra_give_the_poses_of_a_fresh_bank(monkeypatch):
    """Targets of several sizes in turn: the bank keeps each size's spectra, and what it finds with
    them is bit for bit what a bank that never saw another size finds."""
    phantom = make_phantom((96, 112))
    roi = ndimage.binary_dilation(phantom.mask > 0, iterations=6)
    options = SearchOptions(scale_steps=3)
    targets = [_target(phantom.image, shape, (10.0, 6.0)) for shape in ((130, 150), (100, 160), (130, 150))]
    fresh = [_poses(search(build_bank(phantom.image, roi, _describe, options), t.shape,
                           lambda shape, t=t: _describe(t, shape), options)) for t in targets]
    shared = build_bank(phantom.image, roi, _describe, options)
    calls = []
    real = search_module.sfft.rfftn
    monkeypatch.setattr(search_module.sfft, "rfftn", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached = [_poses(search(shared, t.shape, lambda shape, t=t: _describe(t, shape), options)) for t in targets]
    assert cached == fresh
    assert len(shared._spectra) == 2  # two sizes held; the third target reused the first's spectra
    angles = len(shared.rotations)
    # per target: one spectrum per scale of the target; the bank's spectra only for the two new sizes
    assert len(calls) == 3 * 3 + 2 * angles


def test_the_spectra_cache_is_bounded(monkeypatch):
    phantom = make_phantom((64, 64))
    roi = phantom.mask > 0
    bank = build_bank(phantom.image, roi, _describe, SearchOptions())
    for n in range(100, 100 + 6 * 8, 8):
        bank.spectra((n, n))
    assert len(bank._spectra) == search_module.CACHED_SIZES
    assert list(bank._spectra)[-1] == (140, 140)  # the newest kept, the oldest gone
    one = sum(a.nbytes for a in bank._spectra[(140, 140)])
    monkeypatch.setattr(search_module, "CACHED_BYTES", int(1.5 * one))
    bank.spectra((200, 200))  # larger than the budget: kept alone, as before the cache
    assert list(bank._spectra) == [(200, 200)]


def test_the_overlap_factors_cache_is_bounded_in_bytes(monkeypatch):
    """Per search shape the factors are two real arrays per angle (3D: tens of MB each size): a batch of
    volumes of many sizes once held up to 32 sizes of them (hippocampus volumes: 0.2 GB more per target)."""
    phantom = make_phantom((64, 64))
    bank = build_bank(phantom.image, phantom.mask > 0, _describe, SearchOptions())
    options = SearchOptions()
    bank.factors((40, 40), options)
    one = search_module._nbytes(bank._factors[(40, 40)])
    assert one > 0
    monkeypatch.setattr(search_module, "CACHED_BYTES", int(2.5 * one))
    for n in range(41, 47):
        bank.factors((n, 40), options)
    held = sum(search_module._nbytes(v) for v in bank._factors.values())
    assert held <= 2.5 * one * 1.1 and len(bank._factors) == 2
    assert list(bank._factors)[-1] == (46, 40)  # the newest kept, the oldest gone


@pytest.mark.parametrize("deformation", ["features", "auto"])
def test_the_kept_refinement_grid_deforms_as_a_new_one(deformation, monkeypatch):
    """deform_verified reuses the affine stage's refinement grid: the same field as describing it anew,
    and the target is described on that grid once instead of twice."""
    phantom = make_phantom((96, 112))
    template = phantom.image
    target = ndimage.shift(template, (5.0, -4.0), order=1, mode="nearest")
    roi = ndimage.binary_dilation(phantom.mask > 0, iterations=6)
    options = CorrespondOptions(search=SearchOptions(candidates=1), intensity=False, deformation=deformation)
    side = TemplateSide(template, _unit(template), roi, _describe, _unit, options)
    made = []
    original = TargetLevel.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TargetLevel, "__init__", counting)
    affine = correspond(side, target, _unit(target), deformable=False)
    assert affine.level is not None and len(made) == 1
    kept = deform_verified(side, target, _unit(target), affine)
    assert len(made) == 1  # no second description of the target
    affine.level = None  # as before the change: deform_verified makes the grid again
    again = deform_verified(side, target, _unit(target), affine)
    assert len(made) == 2
    np.testing.assert_array_equal(kept.backward, again.backward)
    assert kept.score == again.score
    assert kept.level is None  # the result does not hold the target's descriptors


def _two_stage_case():
    """A 100 mm phantom filling a 128 x 128 x 120 mm template whose labels are small: two stages."""
    from volume_helpers import phantom_template

    from medshot.data.image import from_array
    from medshot.synthetic3d import Phantom3D, Warp3D, grid_affine, sample_phantom

    phantom = Phantom3D(100.0, seed=1)
    template = phantom_template(phantom, (64, 64, 48), (2.0, 2.0, 2.5))
    c, s = np.cos(np.deg2rad(4.0)), np.sin(np.deg2rad(4.0))
    warp = Warp3D(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) * 1.03, np.array([3.0, -4.0, 2.0]), 1.0, 40.0)
    t_shape, t_spacing = (60, 70, 40), (2.2, 1.9, 3.0)
    t_affine = grid_affine(t_shape, t_spacing, (4.0, -6.0, 3.0), "LPS")
    t_array, truth = sample_phantom(phantom, t_shape, t_affine, warp)
    return template, from_array(t_array, t_affine), from_array(truth, t_affine).array


def test_one_covering_box_keeps_the_fine_stage_choice(monkeypatch):
    """Volumes' fine stage: the candidates' boxes cut from one described covering box choose the same
    candidate, with Dice within 0.02 of describing each box on its own (before issue 20), and the
    target is described twice (coarse grid, covering box) instead of once per candidate plus once."""
    from medshot.evaluation.metrics import dice
    from medshot.pipeline import OneShot, fine

    template, target, truth = _two_stage_case()
    shot = OneShot(template)
    assert shot.plan.two_stage
    prepared = []
    real = OneShot.prepare
    monkeypatch.setattr(OneShot, "prepare", lambda self, *a: prepared.append(a[1].shape) or real(self, *a))
    monkeypatch.setattr(fine, "COVERING_BOX", False)
    before = shot.run(target)
    candidates = len(prepared) - 1
    assert candidates >= 2  # several boxes to cover, else there is nothing to test
    prepared.clear()
    monkeypatch.setattr(fine, "COVERING_BOX", True)
    after = shot.run(target)
    assert len(prepared) == 2
    assert after.correspondence == before.correspondence
    for label in (1, 2):
        d_before = dice(before.label_map == label, truth == label)
        d_after = dice(after.label_map == label, truth == label)
        assert d_after >= 0.7 and abs(d_after - d_before) <= 0.02, (label, d_before, d_after)
    assert np.abs(after.landmark_points - before.landmark_points).max() <= 1.0


def test_a_cut_box_holds_the_covering_box_voxels():
    from medshot.data.image import from_array
    from medshot.pipeline.fine import _covering, cut
    from medshot.pipeline.grids import spaced_grid
    from medshot.pipeline.stage import Prepared

    spacing = np.array([1.25, 1.25, 7.7])
    image = from_array(np.zeros((400, 400, 42), np.float32), np.diag([*spacing, 1.0]))
    a = spaced_grid(spacing, 3.8, np.array([110, 76, 3]), np.array([284, 326, 40]))
    b = spaced_grid(spacing, 3.8, np.array([130, 60, 0]), np.array([300, 300, 36]))
    covering = _covering(image, [a, b], 3.8)
    assert covering is not None
    work = np.random.default_rng(0).random(covering.shape).astype(np.float32)
    described = Prepared(image, covering, work, None, np.stack([work, -work]))
    part = cut(described, a)
    assert part.work.shape == a.shape and part.features.shape == (2, *a.shape)
    offset = np.round((a.origin - covering.origin) * covering.factor).astype(int)
    assert part.work[0, 0, 0] == work[tuple(offset)] and np.all(part.features[1] == -part.work)
    far = spaced_grid(spacing, 3.8, np.array([0, 0, 0]), np.array([60, 60, 10]))
    near_end = spaced_grid(spacing, 3.8, np.array([330, 330, 30]), np.array([400, 400, 42]))
    assert _covering(image, [far, near_end], 3.8) is None  # far apart: each described on its own
