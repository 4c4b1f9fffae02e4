"""Unit tests of the correspondence package: geometry, pose search, verification, refinement, inversion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import fft as sfft
from scipy import ndimage

from medshot.core.geometry import (
    apply_affine,
    fft_size,
    grid_coords,
    l2_normalize,
    resize_image,
    rotation_2d,
    scale_matrix,
    warp_channels,
)
from medshot.features.classical import classical_features
from medshot.match.correspond import (
    CorrespondOptions,
    TemplateSide,
    correspond,
    deform_verified,
    invert_field,
)
from medshot.match.refine import fit_affine, plausible
from medshot.match.search import SearchOptions, _overlap, build_bank, search
from medshot.match.verify import Verifier
from medshot.synthetic import make_phantom


def test_scale_matrix_keeps_pixel_centres():
    M = scale_matrix([2.0, 0.5])
    # the outer edges of pixel 0 (-0.5) stay the outer edges: (-0.5 + 0.5) * f - 0.5 = -0.5
    assert np.allclose(apply_affine(M, [[-0.5, -0.5]]), [[-0.5, -0.5]])
    assert np.allclose(apply_affine(M, [[9.5, 9.5]]), [[19.5, 4.5]])


def test_rotation_about_a_centre_keeps_it_and_turns_the_rest():
    M = rotation_2d(90, 2.0, (10.0, 20.0))
    assert np.allclose(apply_affine(M, [[10.0, 20.0]]), [[10.0, 20.0]])
    moved = apply_affine(M, [[11.0, 20.0]])[0] - [10.0, 20.0]
    assert np.isclose(np.hypot(*moved), 2.0) and np.isclose(moved[0], 0.0, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_channels_matches_map_coordinates(ndim):
    rng = np.random.default_rng(ndim)
    shape = (7, 9, 5)[:ndim]
    data = rng.random((3, *shape)).astype(np.float32)
    coords = rng.uniform(-1, np.array(shape)[:, None] + 0.5, size=(ndim, 40))
    expected = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in data])
    assert np.allclose(warp_channels(data, coords), expected, atol=1e-5)


def test_overlap_from_integral_image_equals_the_fft_overlap():
    rng = np.random.default_rng(0)
    n, shape = 9, (13, 17)
    w = rng.random((n, n))
    integral = np.pad(w.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    fshape = (fft_size(shape[0] + n), fft_size(shape[1] + n))
    by_fft = sfft.irfft2(sfft.rfft2(w[::-1, ::-1], s=fshape) * sfft.rfft2(np.ones(shape), s=fshape), s=fshape)
    assert np.allclose(_overlap(integral, n, shape), by_fft[: shape[0] + n - 1, : shape[1] + n - 1])


def test_invert_field_of_an_affine_is_the_affine():
    M = rotation_2d(25, 1.3, (40.0, 50.0))
    M[:2, 2] += [3.0, -4.0]
    backward = grid_coords(np.linalg.inv(M), (100, 120))
    points = np.array([[30.0, 40.0], [55.5, 61.2], [20.0, 80.0]])
    found = invert_field(backward, points, points)  # a poor start on purpose
    assert np.allclose(found, apply_affine(M, points), atol=1e-3)


def test_fit_affine_ignores_outliers():
    rng = np.random.default_rng(1)
    M = np.array([[1.1, 0.2, 5.0], [-0.1, 0.9, -3.0], [0, 0, 1.0]])
    src = rng.uniform(0, 100, (200, 2))
    dst = apply_affine(M, src) + rng.normal(0, 0.2, (200, 2))
    dst[:30] += rng.uniform(-40, 40, (30, 2))  # 15 % gross outliers
    assert np.allclose(fit_affine(src, dst, np.ones(200)), M, atol=0.05)


def test_plausible_rejects_folds_and_extreme_shear():
    assert plausible(rotation_2d(170, 1.5))
    assert not plausible(np.diag([1.0, -1.0, 1.0]))  # a mirror folds the anatomy
    assert not plausible(np.array([[5.0, 0, 0], [0, 0.5, 0], [0, 0, 1]]))


def _describe(image, shape):
    return classical_features(resize_image(image, shape))


@pytest.mark.parametrize("angle,scale", [(120.0, 1.5), (-90.0, 0.6), (180.0, 1.0)])
def test_search_finds_a_turned_and_scaled_structure(angle, scale):
    phantom = make_phantom()
    template = phantom.image
    roi = phantom.mask > 0
    roi = ndimage.binary_dilation(roi, iterations=8)
    bank = build_bank(template, roi, _describe)
    # the target: the phantom turned and scaled about the region's centre, then shifted, on a larger canvas
    truth = rotation_2d(angle, scale, bank.center)
    truth[:2, 2] += [60.0, 35.0]
    target_shape = (300, 320)
    target = ndimage.map_coordinates(template, grid_coords(np.linalg.inv(truth), target_shape), order=1, cval=0)
    poses = search(bank, target_shape, lambda shape: _describe(target, shape), SearchOptions())
    best = poses[0]
    assert abs((best.angle - angle + 180) % 360 - 180) <= 15
    assert abs(np.log(best.scale / scale)) <= np.log(1.2)
    where = apply_affine(best.matrix, bank.center)[0]
    assert np.hypot(*(where - apply_affine(truth, bank.center)[0])) < 0.1 * bank.radius * scale


def test_verifier_prefers_the_true_placement_and_counts_what_is_missing():
    phantom = make_phantom()
    weight = (ndimage.binary_dilation(phantom.mask > 0, iterations=6)).astype(np.float32)
    verify = Verifier(phantom.image, weight)
    right = verify(phantom.image, np.eye(3))
    shifted = np.eye(3)
    shifted[:2, 2] = [6.0, -5.0]
    wrong = verify(phantom.image, shifted)
    assert right.score > wrong.score and right.present == pytest.approx(1.0)
    off = np.eye(3)
    off[1, 2] = 150.0  # most of the region lands outside the 224-wide image
    assert verify(phantom.image, off).present < 0.5


def _phantom_pair(shift=(5.0, -4.0)):
    phantom = make_phantom((96, 112))
    target = ndimage.shift(phantom.image, shift, order=1, mode="nearest")
    roi = ndimage.binary_dilation(phantom.mask > 0, iterations=6)
    return phantom.image, target, roi


def _unit(image):
    return l2_normalize(classical_features(image), axis=0)


def test_correspond_deforms_its_affine_choice_as_deform_verified_does():
    """The fine stage of a volume deforms only the best of several refined placements, through
    ``deform_verified``: it must be what ``correspond`` itself does after its affine choice."""
    template, target, roi = _phantom_pair()
    options = CorrespondOptions(search=SearchOptions(candidates=1), intensity=False, deformation="features")
    side = TemplateSide(template, _unit(template), roi, _describe, _unit, options)
    whole = correspond(side, target, _unit(target))
    affine = correspond(side, target, _unit(target), deformable=False)
    split = deform_verified(side, target, _unit(target), affine)
    assert whole.chosen.name == affine.chosen.name
    np.testing.assert_allclose(split.backward, whole.backward, atol=1e-4)
    assert split.score == pytest.approx(whole.score)
    # the placement is right: the shifted phantom's organ centre comes from the template's
    centre = np.argwhere(ndimage.shift(roi.astype(float), (5.0, -4.0), order=0) > 0.5).mean(0)
    source = [ndimage.map_coordinates(c, centre[:, None], order=1)[0] for c in split.backward]
    assert np.hypot(*(np.array(source) - np.argwhere(roi).mean(0))) < 2.0


def test_without_redescribe_the_template_descriptors_are_resampled():
    template, _, roi = _phantom_pair()
    features = _unit(template)
    kept = TemplateSide(template, features, roi, _describe, _unit, CorrespondOptions())
    resampled = TemplateSide(template, features, roi, _describe, _unit,
                             CorrespondOptions(redescribe=False))
    assert kept.describe is not None and resampled.describe is None
    # None: described again only where the refinement grid is about the working grid (here 96 x 112)
    auto = CorrespondOptions(redescribe=None)
    for side, again in ((128, True), (90, True), (64, False)):
        auto.refine.affine_side = auto.refine.deform_side = side
        assert (TemplateSide(template, features, roi, _describe, _unit, auto).describe is not None) == again
    # at the template's own pixels, resampling gives back its own descriptors exactly
    coords = np.indices(template.shape, dtype=np.float64)
    seen, valid = resampled.at(coords)
    np.testing.assert_allclose(seen[:, valid], features[:, valid], atol=1e-5)
