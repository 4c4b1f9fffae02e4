"""A volume template run on itself gives itself back, whatever the volume's geometry (property-based).

Clinical volumes come at every voxel shape: isotropic research MR, 0.7 mm CT pixels on 3 mm slices,
1.25 x 1.25 x 7.7 mm abdominal MR, any axis order, slightly oblique. A template must segment itself
with Dice ~1 and localize its own landmarks within a voxel at each of them, and a copy moved by a
known translation must be found; the registration baselines of ``medshot evaluate`` likewise. (At
1.25 x 1.25 x 7.7 mm the label maps used to come back shrunk towards a corner, Dice 0, scored 1.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from volume_helpers import template_of as _template

from medshot.data.image import from_array
from medshot.evaluation.baselines import run_baseline
from medshot.evaluation.metrics import dice
from medshot.match.correspond import Candidate, Correspondence
from medshot.match.verify import Verification
from medshot.pipeline import OneShot
from medshot.pipeline.carry import carry_labels
from medshot.pipeline.grids import WorkGrid, spaced_grid
from medshot.synthetic3d import Phantom3D, Warp3D, grid_affine, landmarks_voxel, sample_phantom

PHANTOM = Phantom3D(60.0, seed=1)
FOV_MM = (90.0, 90.0, 64.0)  # the 60 mm phantom with a margin, in-plane and across slices


def _tilted(affine: np.ndarray, degrees: float) -> np.ndarray:
    """``affine`` turned by ``degrees`` about the world's z and x axes (an oblique acquisition)."""
    a = np.deg2rad(degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    out = affine.copy()
    out[:3, :3] = rz @ rx @ affine[:3, :3]
    out[:3, 3] = rz @ rx @ affine[:3, 3]
    return out


def _volume(side: int, anisotropy: float, axcodes: str, tilt: float, warp: Warp3D | None = None):
    """The phantom on ``side`` x ``side`` pixels of the in-plane field of view, slices ``anisotropy`` times thicker.

    Returns the image, its label map and its landmarks (array indices of the image).
    """
    pixel = FOV_MM[0] / side
    spacing = (pixel, pixel, pixel * anisotropy)
    shape = (side, side, max(6, int(round(FOV_MM[2] / spacing[2]))))
    affine = _tilted(grid_affine(shape, spacing, (2.0, -3.0, 1.0), axcodes), tilt)
    array, labels = sample_phantom(PHANTOM, shape, affine, warp)
    image = from_array(array, affine)
    points = image.source_to_index(landmarks_voxel(PHANTOM, affine, warp))
    return image, from_array(labels, affine).array.astype(np.int32), points


geometries = dict(side=st.sampled_from([64, 96, 160, 256, 400, 512]), anisotropy=st.floats(1.0, 8.0),
                  axcodes=st.sampled_from(["RAS", "LAS", "LPS", "PLI"]), tilt=st.floats(0.0, 3.0))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(**geometries)
@example(side=400, anisotropy=6.16, axcodes="LPS", tilt=0.0)  # 0.225 x 0.225 x 1.39 mm: the 1.25/7.7 mm shape
@example(side=64, anisotropy=1.0, axcodes="RAS", tilt=0.0)
def test_a_volume_template_gives_itself_back(side, anisotropy, axcodes, tilt):
    image, labels, points = _volume(side, anisotropy, axcodes, tilt)
    shot = OneShot(_template(image, labels, points))
    result = shot.run(image)
    for label in (1, 2):
        assert dice(result.label_map == label, labels == label) >= 0.99, (label, result.scores)
    assert np.abs(result.landmark_points - points).max() <= 1.0
    # the same for the registration baselines medshot evaluate compares with
    for name in ("identity", "affine"):
        baseline = run_baseline(shot, image, name)
        for label in (1, 2):
            assert dice(baseline.label_map == label, labels == label) >= 0.99, (name, label)


@pytest.mark.slow
@settings(max_examples=2, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(**geometries, shift=st.tuples(*[st.floats(-5.0, 5.0)] * 3))
def test_a_shifted_copy_is_found(side, anisotropy, axcodes, tilt, shift):
    image, labels, points = _volume(side, anisotropy, axcodes, tilt)
    moved, moved_labels, moved_points = _volume(side, anisotropy, axcodes, tilt, Warp3D(shift=np.array(shift)))
    result = OneShot(_template(image, labels, points)).run(moved)
    for label in (1, 2):
        assert dice(result.label_map == label, moved_labels == label) >= 0.9, label
    assert np.abs(result.landmark_points - moved_points).max() <= 1.0


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="known miss: organ 1 of a copy shifted one thick slice comes back at Dice "
                   "0.898 (found by hypothesis when the test's source changed, 2026-12-04; not yet investigated)")
def test_a_copy_shifted_one_thick_slice_is_found():
    image, labels, points = _volume(64, 2.0, "RAS", 0.0)
    moved, moved_labels, _ = _volume(64, 2.0, "RAS", 0.0, Warp3D(shift=np.array([0.0, 0.0, 1.0])))
    result = OneShot(_template(image, labels, points)).run(moved)
    for label in (1, 2):
        assert dice(result.label_map == label, moved_labels == label) >= 0.9, label


def test_grids_of_one_volume_share_one_lattice():
    spacing = np.array([1.25, 1.25, 7.7])
    whole = spaced_grid(spacing, 3.8, np.zeros(3), np.array([400, 400, 42]))
    box = spaced_grid(spacing, 3.8, np.array([110, 76, 3]), np.array([284, 326, 40]))
    volume = np.random.default_rng(0).random((400, 400, 42)).astype(np.float32)
    # the box's working voxels are whole-grid working voxels: same positions, same values
    offset = np.round(box.origin * box.factor).astype(int)
    np.testing.assert_allclose(box.origin * box.factor, offset, atol=1e-9)
    sub = tuple(slice(o, o + n) for o, n in zip(offset, box.shape))
    np.testing.assert_allclose(box.resample(volume)[tuple(slice(4, -4) for _ in range(3))],
                               whole.resample(volume)[sub][tuple(slice(4, -4) for _ in range(3))], atol=1e-5)


@pytest.mark.parametrize("max_voxels", [None, 5000])
def test_labels_are_carried_at_the_targets_resolution(max_voxels):
    """Identity correspondence: the label map comes back voxel for voxel, however small the slab."""
    rng = np.random.default_rng(0)
    mask = np.zeros((120, 100, 12), np.int32)
    mask[30:50, 20:24, 3:9] = 1  # thin in-plane, few slices
    mask[70:71, 60:90, 5] = 2  # one voxel thick
    mask[rng.random(mask.shape) > 0.999] = 3
    grid = WorkGrid((40, 33, 24), np.zeros(3), np.array([40 / 120, 33 / 100, 2.0]))
    eye = np.eye(4)
    backward = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape], indexing="ij"))
    chosen = Candidate("identity", eye, Verification(1.0, 1.0, 1.0))
    out = carry_labels(mask, [1, 2, 3], Correspondence(backward, eye, chosen, [chosen]), grid, grid, mask.shape,
                       max_voxels, np.uint8)
    np.testing.assert_array_equal(out, mask)


@pytest.mark.slow
def test_batch_mode_gives_a_thick_slice_template_itself_back():
    """Batch mode fuses pseudo-templates into every target: the template among them must still come back."""
    from medshot.pipeline.batch import Batch

    image, labels, points = _volume(64, 6.16, "LPS", 0.0)  # the 1.25 x 1.25 x 7.7 mm voxel shape
    shot = OneShot(_template(image, labels, points))
    others = [_volume(64, 6.16, "LPS", 0.0, Warp3D(shift=np.array([2.0 * i - 3, 1.5 - i, 0.5 * i]),
                                                    amplitude=1.0 + 0.5 * i))[0] for i in range(3)]
    batch = Batch(shot)
    itself = batch.run([image, *others])[0]
    assert len(itself.templates) > 1, batch.note  # pseudo-templates took part
    for label in (1, 2):
        assert dice(itself.label_map == label, labels == label) >= 0.99, (label, itself.scores)
    assert np.abs(itself.landmark_points - points).max() <= 1.0
