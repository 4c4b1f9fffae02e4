"""The volume method on synthetic volumes with a known deformation, slice counts, spacings and orientations."""

from __future__ import annotations

import numpy as np
import pytest

from medshot.evaluation.metrics import dice
from medshot.features.classical import ClassicalBackbone
from medshot.volume.align3d import AlignOptions3D, Correspondence3D
from medshot.volume.features3d import classical_features_3d, slice_features
from medshot.volume.io3d import from_array
from medshot.volume.pipeline3d import VolumeShot
from medshot.volume.synthetic3d import Phantom3D, Warp3D, grid_affine, landmarks_voxel, sample_phantom
from medshot.volume.template3d import Landmark3D, VolumeTemplate

TEMPLATE_SHAPE, TEMPLATE_SPACING = (44, 44, 34), (1.4, 1.4, 1.8)


def _rotation(deg_xyz) -> np.ndarray:
    out = np.eye(3)
    for axis, deg in enumerate(deg_xyz):
        a = np.deg2rad(deg)
        i, j = [k for k in range(3) if k != axis]
        R = np.eye(3)
        R[i, i], R[i, j], R[j, i], R[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
        out = R @ out
    return out


def _template(phantom: Phantom3D) -> VolumeTemplate:
    aff = grid_affine(TEMPLATE_SHAPE, TEMPLATE_SPACING)
    image, labels = sample_phantom(phantom, TEMPLATE_SHAPE, aff)
    t = VolumeTemplate(image_path=None, labels={1: "organ 1", 2: "organ 2"},  # type: ignore[arg-type]
                       landmarks=[Landmark3D(n, p) for n, p in zip("abcd", landmarks_voxel(phantom, aff))])
    t._image = from_array(image, aff)
    t._mask = from_array(labels, aff).array.astype(np.int32)
    t.mask_path = "in-memory"  # type: ignore[assignment]
    return t


WORK_SPACING = 1.8  # mm; coarser than the template's 1.4 mm keeps the tests fast

TARGETS = {
    # fewer, thicker slices, anisotropic in-plane spacing, a non-canonical axis order and a smooth warp
    "thick-slices-PLI": dict(shape=(40, 48, 26), spacing=(1.6, 1.25, 2.4), center=(3, -2, 4), axcodes="PLI",
                             warp=Warp3D(_rotation((4, -3, 6)) * 1.05, np.array([2.0, -3.0, 1.5]), 1.5, 50.0)),
    # a field of view twice as large, with the anatomy off-centre, and more slices
    "wide-fov-LAS": dict(shape=(48, 50, 44), spacing=(2.2, 2.1, 1.8), center=(-16, 12, -8), axcodes="LAS",
                         warp=Warp3D(_rotation((-5, 0, -4)) * 0.95, np.array([-1.5, 2.0, 0.0]), 1.0, 40.0)),
}


@pytest.fixture(scope="module")
def phantom():
    return Phantom3D(60.0, seed=1)


@pytest.fixture(scope="module")
def shot(phantom):
    return VolumeShot(_template(phantom), work_spacing=WORK_SPACING)


@pytest.fixture(scope="module", params=sorted(TARGETS))
def case(request, phantom, shot):
    spec = TARGETS[request.param]
    aff = grid_affine(spec["shape"], spec["spacing"], spec["center"], spec["axcodes"])
    image, truth = sample_phantom(phantom, spec["shape"], aff, spec["warp"])
    volume = from_array(image, aff)
    result = shot.run(volume)
    return result, truth, landmarks_voxel(phantom, aff, spec["warp"])


def test_landmarks_within_two_voxels(case):
    result, _, truth_ijk = case
    err = np.linalg.norm(result.landmarks_ijk - truth_ijk, axis=1)
    assert err.max() <= 2.0, err
    # world mm columns agree with the voxel columns through the target's own affine
    np.testing.assert_allclose(result.landmarks_xyz, result.volume.source_to_world(result.landmarks_ijk))
    assert all(0.0 <= lm.confidence <= 1.0 for lm in result.landmarks)


def test_label_maps_dice_at_least_085(case):
    result, truth, _ = case
    labels = result.volume.to_source_array(result.label_map)
    assert labels.shape == truth.shape
    for label in (1, 2):
        assert dice(labels == label, truth == label) >= 0.85, label
    assert set(result.scores) == {1, 2} and all(0.0 <= s <= 1.0 for s in result.scores.values())


def test_same_volume_maps_onto_itself(phantom, shot):
    t = shot.template
    result = shot.run(t.image)
    err = np.linalg.norm(result.landmarks_ijk - t.landmarks_ijk, axis=1)
    assert err.max() < 1.0
    labels = result.label_map
    assert dice(labels == 1, t.mask == 1) > 0.95 and dice(labels == 2, t.mask == 2) > 0.95


@pytest.mark.parametrize("baseline", ["affine", "affine@medshot"])
def test_baseline_registration_runs_on_the_same_grids(phantom, shot, baseline):
    spec = TARGETS["thick-slices-PLI"]
    aff = grid_affine(spec["shape"], spec["spacing"], spec["center"], spec["axcodes"])
    image, truth = sample_phantom(phantom, spec["shape"], aff, spec["warp"])
    result = shot.run(from_array(image, aff), baseline=baseline)
    labels = result.volume.to_source_array(result.label_map)
    assert dice(labels == 1, truth == 1) > 0.7
    err = np.linalg.norm(result.landmarks_ijk - landmarks_voxel(phantom, aff, spec["warp"]), axis=1)
    assert err.max() < 3.0


def test_random_walker_refinement_keeps_the_structures(phantom, shot):
    spec = TARGETS["thick-slices-PLI"]
    aff = grid_affine(spec["shape"], spec["spacing"], spec["center"], spec["axcodes"])
    image, truth = sample_phantom(phantom, spec["shape"], aff, spec["warp"])
    shot.refine = "randomwalker"
    try:
        result = shot.run(from_array(image, aff), landmarks=False)
    finally:
        shot.refine = "none"
    labels = result.volume.to_source_array(result.label_map)
    for label in (1, 2):
        assert dice(labels == label, truth == label) >= 0.8


def test_correspondence_forward_inverts_backward():
    rng = np.random.default_rng(0)
    M = np.eye(4)
    M[:3, :3] = _rotation((5, -4, 3)) * 1.1
    M[:3, 3] = [2.0, -1.0, 3.0]
    shape = (20, 22, 18)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    Minv = np.linalg.inv(M)
    field = np.tensordot(Minv[:3, :3], grid, axes=(1, 0)) + Minv[:3, 3][:, None, None, None]
    field += 0.8 * np.sin(grid / 5.0)  # smooth, invertible bend
    corr = Correspondence3D(M, tuple(slice(0, n) for n in shape), field.astype(np.float32), shape, 1.0)
    targets = rng.uniform(4, 14, size=(5, 3))
    template_pts = corr.backward(targets)
    np.testing.assert_allclose(corr.forward(template_pts), targets, atol=0.05)


def test_classical_3d_descriptors_are_unit_and_shaped():
    vol = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    f = classical_features_3d(vol)
    assert f.shape == (36, 12, 14, 10) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, atol=1e-4)


class CountingBackbone:
    """A 2D backbone that counts its calls (stands in for a foundation model)."""

    name = "counting-classical-2d"

    def __init__(self):
        self.inner = ClassicalBackbone()
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        return self.inner(image)


def test_2d_backbone_runs_once_per_slice_and_streams():
    vol = np.random.default_rng(1).random((16, 18, 9)).astype(np.float32)
    bb = CountingBackbone()
    feats, basis = slice_features(vol, bb, reduced_dims=8, slice_side=48)
    assert bb.calls == 9  # every slice once, including the ones the PCA basis was fitted on
    assert feats.shape == (8, 16, 18, 9) and basis is not None and basis.shape[0] == 8
    np.testing.assert_allclose(np.linalg.norm(feats, axis=0), 1.0, atol=1e-4)


@pytest.mark.slow
def test_2d_backbone_route_finds_landmarks(phantom):
    bb = CountingBackbone()
    shot = VolumeShot(_template(phantom), backbone=bb, slice_side=96, work_spacing=WORK_SPACING,
                      align_options=AlignOptions3D(rotations_deg=0.0))
    template_calls = bb.calls
    spec = TARGETS["thick-slices-PLI"]
    aff = grid_affine(spec["shape"], spec["spacing"], spec["center"], spec["axcodes"])
    image, truth = sample_phantom(phantom, spec["shape"], aff, spec["warp"])
    result = shot.run(from_array(image, aff))
    target_slices = bb.calls - template_calls
    assert 0 < target_slices <= 64  # once per working slice, not per native slice twice
    err = np.linalg.norm(result.landmarks_ijk - landmarks_voxel(phantom, aff, spec["warp"]), axis=1)
    assert err.max() <= 3.0, err
    labels = result.volume.to_source_array(result.label_map)
    assert dice(labels == 1, truth == 1) >= 0.8
