"""``medshot template | localize | segment`` on volumes: NIfTI and DICOM-series targets, output geometry, errors."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medshot.cli import main
from medshot.evaluation.metrics import dice
from medshot.synthetic3d import (
    LANDMARK_NAMES_3D,
    Phantom3D,
    Warp3D,
    grid_affine,
    landmarks_voxel,
    sample_phantom,
    write_dicom_series,
)

WORK = ["--work-spacing", "1.8", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Template volume + labels + landmark CSV (mm), a non-canonical NIfTI target and a DICOM-series target."""
    root = tmp_path_factory.mktemp("vol")
    ph = Phantom3D(60.0, seed=1)
    t_shape, t_aff = (44, 44, 34), grid_affine((44, 44, 34), (1.4, 1.4, 1.8))
    image, labels = sample_phantom(ph, t_shape, t_aff)
    nib.save(nib.Nifti1Image(image, t_aff), root / "template.nii.gz")
    nib.save(nib.Nifti1Image(labels, t_aff), root / "template_labels.nii.gz")
    xyz = ph.landmarks
    (root / "landmarks.csv").write_text("name,x_mm,y_mm,z_mm\n" + "".join(
        f"{n},{x:.3f},{y:.3f},{z:.3f}\n" for n, (x, y, z) in zip(LANDMARK_NAMES_3D, xyz)))
    warp = Warp3D(np.eye(3) * 1.04, np.array([2.0, -3.0, 1.5]), 1.5, 50.0)
    s_shape, s_aff = (40, 48, 26), grid_affine((40, 48, 26), (1.6, 1.25, 2.4), (3, -2, 4), axcodes="PLI")
    target, truth = sample_phantom(ph, s_shape, s_aff, warp)
    nib.save(nib.Nifti1Image((target * 1000).astype(np.int16), s_aff), root / "target.nii.gz")
    # an axial series: rows run posterior, columns to the patient's right, slices inferior
    d_shape, d_aff = (42, 46, 28), grid_affine((42, 46, 28), (1.5, 1.5, 2.2), (-2, 3, 0), axcodes="PRI")
    dcm, dcm_truth = sample_phantom(ph, d_shape, d_aff, warp)
    write_dicom_series(dcm * 1000 - 1024, d_aff, root / "series01", slope=1.0, intercept=-1024.0)
    return {"root": root, "truth": truth, "target_affine": s_aff, "truth_lm": landmarks_voxel(ph, s_aff, warp),
            "dicom_affine": d_aff, "dicom_truth": dcm_truth, "dicom_truth_lm": landmarks_voxel(ph, d_aff, warp)}


@pytest.fixture(scope="module")
def template_json(files):
    root = files["root"]
    out = root / "t.json"
    rc = main(["template", str(root / "template.nii.gz"), "--mask", str(root / "template_labels.nii.gz"),
               "--landmarks", str(root / "landmarks.csv"), "--out", str(out)])
    assert rc == 0
    return out


def test_template_json_describes_the_volume(template_json):
    spec = json.loads(template_json.read_text())
    assert spec["kind"] == "volume" and set(spec["labels"]) == {"1", "2"}
    assert [lm["name"] for lm in spec["landmarks"]] == list(LANDMARK_NAMES_3D)
    assert all(k in spec["landmarks"][0] for k in ("i", "j", "k", "x", "y", "z"))


def test_segment_writes_masks_in_each_targets_geometry(files, template_json, tmp_path):
    root = files["root"]
    out = tmp_path / "seg"
    rc = main(["segment", "--template", str(template_json), "--out", str(out), str(root / "target.nii.gz"),
               str(root / "series01"), *WORK])
    assert rc == 0
    # NIfTI target with a non-canonical (PLI) orientation: same affine, shape and axis order
    mask = nib.load(out / "target_mask.nii.gz")
    target = nib.load(root / "target.nii.gz")
    assert mask.shape == target.shape
    np.testing.assert_allclose(mask.affine, target.affine)
    assert nib.aff2axcodes(mask.affine) == ("P", "L", "I")
    labels = np.asanyarray(mask.dataobj)
    for label in (1, 2):
        assert dice(labels == label, files["truth"] == label) >= 0.85
    # DICOM series target: the mask carries the series' own geometry
    dmask = nib.load(out / "series01_mask.nii.gz")
    assert dmask.shape == files["dicom_truth"].shape
    np.testing.assert_allclose(dmask.affine, files["dicom_affine"], atol=1e-5)
    dl = np.asanyarray(dmask.dataobj)
    for label in (1, 2):
        assert dice(dl == label, files["dicom_truth"] == label) >= 0.85
    # three orthogonal planes per structure, and the results table
    for stem in ("target", "series01"):
        for label in (1, 2):
            pic = np.asarray(Image.open(out / f"{stem}_label{label}_overlay.png"))
            assert pic.ndim == 3 and pic.shape[1] > 2 * pic.shape[0] * 0.5
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert list(rows[0]) == ["target", "label", "volume_voxels", "volume_ml", "score", "seconds", "status", "reason"]
    assert len(rows) == 4
    first = rows[0]
    voxel_ml = abs(np.linalg.det(files["target_affine"][:3, :3])) / 1000
    assert int(first["volume_voxels"]) == int((labels == 1).sum())
    assert float(first["volume_ml"]) == pytest.approx(int(first["volume_voxels"]) * voxel_ml, rel=1e-3)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_localize_writes_voxel_and_mm_columns(files, template_json, tmp_path):
    out = tmp_path / "loc"
    rc = main(["localize", "--template", str(template_json), "--out", str(out),
               str(files["root"] / "target.nii.gz"), *WORK])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "landmarks.csv")))
    assert list(rows[0]) == ["target", "landmark", "i", "j", "k", "x_mm", "y_mm", "z_mm", "confidence", "status",
                             "reason"]
    ijk = np.array([[float(r[c]) for c in "ijk"] for r in rows])
    xyz = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in rows])
    aff = files["target_affine"]
    np.testing.assert_allclose(xyz, ijk @ aff[:3, :3].T + aff[:3, 3], atol=0.01)
    assert np.linalg.norm(ijk - files["truth_lm"], axis=1).max() <= 2.0


def test_python_api_takes_the_same_path(files, template_json):
    """``OneShot.run`` on a DICOM series: a label map on the volume's (canonical) grid, landmarks as its indices."""
    from medshot import OneShot, Template, from_array, read_image

    image = read_image(files["root"] / "series01")
    result = OneShot(Template.load(template_json), work_spacing=1.8).run(image)
    assert result.label_map.shape == image.shape
    truth = from_array(files["dicom_truth"].astype(np.float32), files["dicom_affine"]).array
    for label in (1, 2):
        assert dice(result.label_map == label, truth == label) >= 0.85
    points = result.landmark_points
    assert points.shape == (4, 3)
    np.testing.assert_allclose([lm.world for lm in result.landmarks], image.index_to_world(points), atol=1e-6)
    assert np.linalg.norm(image.index_to_source(points) - files["dicom_truth_lm"], axis=1).max() <= 2.0


def test_volume_template_refuses_2d_targets_before_writing(files, template_json, tmp_path, capsys):
    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(png)
    out = tmp_path / "never"
    rc = main(["segment", "--template", str(template_json), "--out", str(out),
               str(files["root"] / "target.nii.gz"), str(png), *WORK])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "slice.png" in err and "not a 3D NIfTI" in err
    assert not out.exists() or not any(out.iterdir())


def test_slice_option_keeps_the_2d_template(files, tmp_path):
    root = files["root"]
    out = tmp_path / "t2d.json"
    rc = main(["template", str(root / "template.nii.gz"), "--mask", str(root / "template_labels.nii.gz"),
               "--slice", "17", "--out", str(out)])
    assert rc == 0
    spec = json.loads(out.read_text())
    assert "kind" not in spec and spec["slice_index"] == 17


def test_landmarks_in_ambiguous_columns_are_refused(files, tmp_path, capsys):
    root = files["root"]
    (tmp_path / "xy.csv").write_text("name,x,y,z\na,1,2,3\n")
    rc = main(["template", str(root / "template.nii.gz"), "--landmarks", str(tmp_path / "xy.csv"),
               "--out", str(tmp_path / "t.json")])
    assert rc == 2 and "i,j,k" in capsys.readouterr().err
