"""Volumes in and out through the one image type: NIfTI orientation, DICOM series ordering and geometry, label maps,
template JSON, CSVs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medshot.core.errors import MedshotError
from medshot.data.annotations import read_landmarks
from medshot.data.dicom import is_dicom_series_dir
from medshot.data.image import from_array
from medshot.data.read import is_volume_path, read_image, read_label_map
from medshot.data.template import Template, is_volume_template
from medshot.data.write import save_label_map
from medshot.synthetic3d import grid_affine, write_dicom_series


def _ramp(shape):
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return 100 * i + 10 * j + k  # every voxel distinct, so any reordering shows


def test_nifti_is_reoriented_to_ras_and_back(tmp_path):
    shape = (6, 7, 5)
    aff = grid_affine(shape, (2.0, 1.5, 3.0), (4, -2, 7), axcodes="PLI")
    data = _ramp(shape)
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    vol = read_image(tmp_path / "v.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.source.shape == shape and vol.shape == (7, 6, 5)
    np.testing.assert_allclose(vol.spacing, [1.5, 2.0, 3.0])
    # the same world point has the same value in both arrays
    src = np.array([[1, 2, 3], [5, 0, 4]], float)
    can = vol.source_to_index(src)
    for s, c in zip(src.astype(int), np.round(can).astype(int)):
        assert data[tuple(s)] == vol.array[tuple(c)]
    np.testing.assert_allclose(vol.index_to_world(can), src @ aff[:3, :3].T + aff[:3, 3])
    np.testing.assert_allclose(vol.index_to_source(can), src)
    np.testing.assert_array_equal(vol.to_source_array(vol.array), data)


def test_label_map_is_written_in_the_target_geometry(tmp_path):
    shape = (6, 7, 5)
    aff = grid_affine(shape, (2.0, 1.5, 3.0), (4, -2, 7), axcodes="LIP")
    labels = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.uint8)
    nib.save(nib.Nifti1Image(_ramp(shape), aff), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(labels, aff), tmp_path / "l.nii.gz")
    vol = read_image(tmp_path / "v.nii.gz")
    canonical, values = read_label_map(tmp_path / "l.nii.gz", vol)
    assert values == {} and canonical.shape == vol.shape
    save_label_map(tmp_path / "out.nii.gz", canonical, vol)
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == shape
    np.testing.assert_allclose(out.affine, aff)
    assert nib.aff2axcodes(out.affine) == ("L", "I", "P")
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), labels)


def test_label_map_with_other_geometry_is_refused(tmp_path):
    shape = (6, 7, 5)
    aff = grid_affine(shape, (2.0, 1.5, 3.0))
    nib.save(nib.Nifti1Image(_ramp(shape), aff), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), tmp_path / "l.nii.gz")
    with pytest.raises(MedshotError, match="geometry"):
        read_label_map(tmp_path / "l.nii.gz", read_image(tmp_path / "v.nii.gz"))


def _expected_ras_affine(paths):
    """The RAS affine a DICOM series implies (source array: rows, columns, slices), read back from the headers."""
    import pydicom

    ds = [pydicom.dcmread(str(p)) for p in paths]
    iop = np.array(ds[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ds.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    rows, cols = float(ds[0].PixelSpacing[0]), float(ds[0].PixelSpacing[1])
    first = np.array(ds[0].ImagePositionPatient, float)
    last = np.array(ds[-1].ImagePositionPatient, float)
    lps = np.eye(4)
    lps[:3, 0] = iop[3:] * rows  # down the rows
    lps[:3, 1] = iop[:3] * cols  # along a row
    lps[:3, 2] = (last - first) / (len(ds) - 1)
    lps[:3, 3] = first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("axcodes", ["RPI", "LAS", "RSP"])  # axial head-first/feet-first and a coronal series
def test_dicom_series_is_ordered_by_position_and_keeps_its_geometry(tmp_path, axcodes):
    shape = (5, 6, 7)
    aff = grid_affine(shape, (0.8, 0.9, 2.5), (10, -20, 30), axcodes=axcodes)
    hu = _ramp(shape) - 1024
    folder = tmp_path / "series"
    paths = write_dicom_series(hu, aff, folder, slope=0.5, intercept=-1024, shuffle_seed=3)
    # file names and InstanceNumbers are shuffled: sorting by name would scramble the slices
    assert sorted(p.name for p in paths) != [p.name for p in paths]
    assert is_dicom_series_dir(folder) and is_volume_path(folder)
    vol = read_image(folder)
    assert vol.kind == "dicom" and vol.source.shape == shape
    np.testing.assert_allclose(vol.source.affine, _expected_ras_affine(paths), atol=1e-6)
    # Same voxels at the same world positions as the array that was written (slices may run the other
    # way along the normal, so compare in the canonical orientation, which is unique).
    truth = from_array(hu, aff)
    np.testing.assert_allclose(vol.affine, truth.affine, atol=1e-6)
    np.testing.assert_allclose(vol.array, truth.array, atol=0.26)  # slope 0.5 -> rounding
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    # a label map written for this target carries the DICOM geometry
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:3, 2:4, 3:5] = 2
    save_label_map(tmp_path / "mask.nii.gz", labels, vol)
    out = nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == shape
    np.testing.assert_allclose(out.affine, _expected_ras_affine(paths), atol=1e-5)
    assert int(out.header["sform_code"]) > 0 and int(out.header["qform_code"]) > 0
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), vol.to_source_array(labels))


def test_dicom_series_problems_are_one_line_errors(tmp_path):
    shape = (4, 4, 6)
    aff = grid_affine(shape, (1.0, 1.0, 2.0))
    folder = tmp_path / "gap"
    paths = write_dicom_series(_ramp(shape), aff, folder)
    paths[2].unlink()  # a missing slice
    with pytest.raises(MedshotError, match="spacing varies"):
        read_image(folder)
    other = tmp_path / "two"
    write_dicom_series(_ramp(shape), aff, other, series_uid="1.2.3.4")
    write_dicom_series(_ramp(shape), aff, other, series_uid="1.2.3.5", shuffle_seed=9)
    with pytest.raises(MedshotError, match="2 DICOM series"):
        read_image(other)


def test_landmark_csv_coordinate_systems(tmp_path):
    shape = (10, 12, 8)
    aff = grid_affine(shape, (2.0, 1.0, 3.0), (5, 5, 5), axcodes="LPS")
    nib.save(nib.Nifti1Image(_ramp(shape), aff), tmp_path / "case1.nii.gz")
    vol = read_image(tmp_path / "case1.nii.gz")
    ijk = np.array([[2.0, 3.5, 4.0], [7.0, 1.0, 0.5]])
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    (tmp_path / "vox.csv").write_text("name,i,j,k\n" + "".join(f"p{n},{a},{b},{c}\n" for n, (a, b, c) in
                                                               enumerate(ijk)))
    (tmp_path / "mm.csv").write_text("name,x_mm,y_mm,z_mm\n" + "".join(f"p{n},{a},{b},{c}\n" for n, (a, b, c) in
                                                                       enumerate(xyz)))
    (tmp_path / "lps.csv").write_text("landmark,x_lps,y_lps,z_lps\n" + "".join(
        f"p{n},{-a},{-b},{c}\n" for n, (a, b, c) in enumerate(xyz)))
    (tmp_path / "multi.csv").write_text("id,label,name,i,j,k\ncase1,1,p0,2,3.5,4\ncase2,1,p0,9,9,9\n"
                                        "case1,2,p1,7,1,0.5\n")
    for name in ("vox", "mm", "lps", "multi"):
        got = read_landmarks(tmp_path / f"{name}.csv", vol, image_name="case1.nii.gz")
        assert [lm.name for lm in got] == ["p0", "p1"]
        np.testing.assert_allclose(vol.index_to_source([lm.point for lm in got]), ijk, atol=1e-9)
    (tmp_path / "bad.csv").write_text("name,x,y,z\np,1,2,3\n")
    with pytest.raises(MedshotError, match="ambiguous"):
        read_landmarks(tmp_path / "bad.csv", vol)


def test_volume_template_json_round_trip(tmp_path):
    shape = (10, 12, 8)
    aff = grid_affine(shape, (2.0, 1.0, 3.0), axcodes="PLI")
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 3:7, 2:5] = 1
    nib.save(nib.Nifti1Image(_ramp(shape), aff), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(labels, aff), tmp_path / "lab.nii.gz")
    (tmp_path / "lm.csv").write_text("name,i,j,k\ntip,3,4,5\n")
    t = Template.build(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "lm.csv",
                             label_names={1: "organ"}, window=(-100, 200))
    t.save(tmp_path / "t.json")
    spec = json.loads((tmp_path / "t.json").read_text())
    assert spec["kind"] == "volume" and spec["labels"] == {"1": "organ"} and spec["window"] == [-100, 200]
    lm = spec["landmarks"][0]
    assert (lm["i"], lm["j"], lm["k"]) == (3, 4, 5)
    np.testing.assert_allclose([lm["x"], lm["y"], lm["z"]], aff[:3, :3] @ [3, 4, 5] + aff[:3, 3], atol=1e-3)
    assert is_volume_template(tmp_path / "t.json")
    back = Template.load(tmp_path / "t.json")
    assert back.ndim == 3
    np.testing.assert_allclose(back.image.index_to_source(back.landmark_points), [[3, 4, 5]])
    assert back.mask is not None and int(back.mask.sum()) == int(labels.sum())
    # landmarks given only in mm are converted to voxels on loading
    del spec["landmarks"][0]["i"]
    (tmp_path / "mm.json").write_text(json.dumps(spec))
    mm = Template.load(tmp_path / "mm.json")
    np.testing.assert_allclose(mm.image.index_to_source(mm.landmark_points), [[3, 4, 5]], atol=1e-3)
    spec["landmarks"][0].update(i=30, j=4, k=5)
    (tmp_path / "out.json").write_text(json.dumps(spec))
    with pytest.raises(MedshotError, match="outside"):
        Template.load(tmp_path / "out.json")
