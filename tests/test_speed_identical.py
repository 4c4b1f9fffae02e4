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
