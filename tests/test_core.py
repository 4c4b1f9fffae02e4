"""Unit tests of the bottom layers, in 2D and 3D alike: geometry, intensity, labels, the Image type,
and block matching (the n-d step every refinement rests on)."""

from __future__ import annotations

import numpy as np
import pytest

from medshot.core.errors import MedshotError
from medshot.core.geometry import (
    apply_affine,
    grid_coords,
    l2_normalize,
    pca_basis,
    project,
    resize_image,
    scale_matrix,
    warp_image,
)
from medshot.core.intensity import apply_range, intensity_range
from medshot.core.labels import choose_labels, dice, farthest_points, sample_prompts
from medshot.data.image import from_array
from medshot.features.classical import classical_features
from medshot.match.refine import block_match

SHAPES = {2: (30, 41), 3: (18, 23, 15)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_resize_keeps_a_linear_ramp_at_pixel_centres(ndim):
    shape = SHAPES[ndim]
    slope = np.arange(1, ndim + 1, dtype=float)
    ramp = np.tensordot(slope, np.indices(shape, dtype=float), axes=1)
    out_shape = tuple(int(n * 1.5) for n in shape)  # enlarging: no smoothing, exact on a ramp
    out = resize_image(ramp, out_shape)
    # working pixel p sits at source position (p + 0.5) / f - 0.5, the scale matrix's convention
    M = scale_matrix(np.array(out_shape, float) / np.array(shape, float))
    src = grid_coords(np.linalg.inv(M), out_shape)
    expected = np.tensordot(slope, np.clip(src, 0, np.array(shape)[(slice(None),) + (None,) * ndim] - 1), axes=1)
    np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_resize_of_a_box_is_the_resize_of_the_crop(ndim):
    image = np.random.default_rng(ndim).random(SHAPES[ndim]).astype(np.float32)
    box = tuple(slice(2, n - 3) for n in image.shape)
    shape = tuple(max(4, n // 2) for n in image.shape)
    np.testing.assert_array_equal(resize_image(image, shape, box), resize_image(image[box].copy(), shape))


@pytest.mark.parametrize("ndim", [2, 3])
def test_grid_coords_are_the_affine_of_every_index(ndim):
    rng = np.random.default_rng(0)
    M = np.eye(ndim + 1)
    M[:ndim, :ndim] += 0.1 * rng.standard_normal((ndim, ndim))
    M[:ndim, ndim] = rng.uniform(-3, 3, ndim)
    shape = SHAPES[ndim]
    coords = grid_coords(M, shape)
    assert coords.shape == (ndim, *shape)
    idx = np.argwhere(np.ones(shape, bool))[::37]
    np.testing.assert_allclose(coords[(slice(None), *idx.T)].T, apply_affine(M, idx), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_image_by_an_integer_shift_moves_the_pixels(ndim):
    image = np.random.default_rng(1).random(SHAPES[ndim]).astype(np.float32)
    shift = np.arange(1, ndim + 1)
    M = np.eye(ndim + 1)
    M[:ndim, ndim] = shift  # output index t samples the image at t + shift
    out = warp_image(image, grid_coords(M, image.shape))
    inner = tuple(slice(0, n - s) for n, s in zip(image.shape, shift))
    moved = tuple(slice(s, n) for n, s in zip(image.shape, shift))
    np.testing.assert_allclose(out[inner], image[moved], atol=1e-5)


def test_pca_projection_keeps_a_low_rank_signal_and_unit_length():
    rng = np.random.default_rng(2)
    factors = rng.standard_normal((3, 12, 10, 8))  # a rank-3 signal in 20 channels, on a 3D grid
    data = np.einsum("ck,k...->c...", rng.standard_normal((20, 3)), factors).astype(np.float32)
    basis = pca_basis(data, 3)
    assert basis.shape == (3, 20)
    reduced = project(basis, data)
    assert reduced.shape == (3, 12, 10, 8)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=0), 1.0, atol=1e-4)
    # cosine similarities between descriptors survive the reduction (the signal lies in the basis)
    full = l2_normalize(data - data.reshape(20, -1).mean(1)[:, None, None, None], axis=0).reshape(20, -1)
    centred = project(basis, data - data.reshape(20, -1).mean(1)[:, None, None, None]).reshape(3, -1)
    np.testing.assert_allclose(full[:, :50].T @ full[:, :50], centred[:, :50].T @ centred[:, :50], atol=1e-3)
    assert pca_basis(data, 20) is None  # nothing to reduce


def test_intensity_window_and_percentiles():
    ct = np.linspace(-1000, 1000, 2001, dtype=np.float32)
    assert intensity_range(ct, (-160, 240)) == (-160.0, 240.0)
    mapped = apply_range(ct, (-160, 240))
    assert mapped.min() == 0.0 and mapped.max() == 1.0 and mapped[1000] == pytest.approx(0.4)
    lo, hi = intensity_range(np.r_[ct, np.float32(1e6)])  # one outlier does not set the range
    assert hi < 1000.5 and lo > -1000.5
    assert not apply_range(np.ones(5), (3.0, 3.0)).any()  # a flat image maps to zeros, not NaN


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_apply_range_is_the_float32_formula_and_leaves_its_input_alone(dtype):
    """apply_range works in place on one new array (a CT's memory peak); values stay those of the plain
    float32 formula, bit for bit, and the input is never written."""
    values = np.random.default_rng(0).normal(100, 80, (40, 30)).clip(0, 250).astype(dtype)
    before = values.copy()
    mapped = apply_range(values, (20.3, 180.7))
    expected = np.clip((values.astype(np.float32) - 20.3) / (180.7 - 20.3), 0.0, 1.0).astype(np.float32)
    assert mapped.dtype == np.float32 and np.array_equal(mapped, expected)
    assert np.array_equal(values, before) and not np.shares_memory(mapped, values)


@pytest.mark.parametrize("ndim", [2, 3])
def test_prompt_points_lie_inside_and_just_outside_the_region(ndim):
    shape = SHAPES[ndim]
    grid = np.indices(shape, dtype=float)
    centre = np.array(shape, float)[(slice(None),) + (None,) * ndim] / 2
    region = (((grid - centre) / 6.0) ** 2).sum(0) <= 1.0
    positive, negative = sample_prompts(region, 5, 4)
    assert positive.shape == (5, ndim) and negative.shape == (4, ndim)
    assert region[tuple(np.round(positive).astype(int).T)].all()
    assert not region[tuple(np.round(negative).astype(int).T)].any()
    assert len({tuple(p) for p in positive}) == 5  # spread out, not repeated
    # negatives hug the region: each is within a few pixels of it
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~region)
    assert distance[tuple(np.round(negative).astype(int).T)].max() <= 6


def test_farthest_points_spread_out():
    points = np.array([[0, 0], [0, 1], [10, 10], [0, 10], [10, 0], [5, 5]], float)
    picked = farthest_points(points, 4, start=0)
    assert sorted(map(tuple, picked.tolist())) == [(0, 0), (0, 10), (10, 0), (10, 10)]


def test_choose_labels_names_and_refuses_absent_labels():
    mask = np.zeros((5, 5), int)
    mask[1, 1], mask[3, 3] = 2, 7
    assert choose_labels(mask, None, {2: "liver"}, "m.png") == {2: "liver", 7: "label 7"}
    with pytest.raises(MedshotError, match="m.png"):
        choose_labels(mask, [3], None, "m.png")
    assert dice(mask == 2, mask == 2) == 1.0 and dice(mask == 2, mask == 7) == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_image_indices_world_and_source_round_trip(ndim):
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    if ndim == 3:
        affine[:3, :3] = np.diag([-0.8, 1.2, 2.5])[:, [1, 0, 2]]  # a permuted, flipped axis order
    affine[:3, 3] = [10.0, -4.0, 7.0]
    image = from_array(rng.random(SHAPES[ndim]).astype(np.float32), affine if ndim == 3 else None)
    points = rng.uniform(0, 10, (6, ndim))
    np.testing.assert_allclose(image.world_to_index(image.index_to_world(points)), points, atol=1e-9)
    np.testing.assert_allclose(image.source_to_index(image.index_to_source(points)), points, atol=1e-9)
    if ndim == 3:
        # the array is reoriented to RAS+: its affine has a positive diagonal, and the source affine
        # and the canonical one put a source voxel at the same place in the world
        assert np.all(np.diag(image.affine)[:3] > 0)
        src = image.index_to_source(points)
        np.testing.assert_allclose(src @ image.source.affine[:3, :3].T + image.source.affine[:3, 3],
                                   image.index_to_world(points), atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_block_match_recovers_a_shift(ndim):
    rng = np.random.default_rng(4)
    from scipy import ndimage

    shape = (40, 44) if ndim == 2 else (24, 26, 22)
    image = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    shift = np.array([2, -1, 1][:ndim])
    target = np.roll(image, tuple(shift), axis=tuple(range(ndim)))
    f_image, f_target = classical_features(image), classical_features(target)
    d, confidence = block_match(f_image, f_target, np.ones(shape, bool), radius=3)
    inner = tuple(slice(6, n - 6) for n in shape)
    median = np.array([np.median(c[inner]) for c in d])
    np.testing.assert_allclose(median, shift, atol=0.25)
    assert confidence[inner].mean() > 0


def test_radiological_layout_puts_anterior_up_and_the_patient_right_on_the_left():
    from medshot.core.geometry import from_radiological, radiological

    volume = np.zeros((5, 6, 7))  # RAS+: x toward the patient's right, y anterior, z superior
    volume[4, 5, 3] = 1.0  # rightmost, most anterior voxel of slice z = 3
    view = radiological(volume)
    assert view.shape == (7, 6, 5)
    assert view[3, 0, 0] == 1.0  # top row (anterior), left column (patient's right)
    assert radiological(volume[:, :, 3])[0, 0] == 1.0  # a slice alike
    assert np.array_equal(from_radiological(view), volume)
