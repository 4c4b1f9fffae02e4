"""3D Slicer landmark files: .mrk.json / .fcsv in ``medshot template``, .mrk.json out of ``medshot localize``.

The input files are written the way Slicer 5 writes them (every field of markups schema v1.0.3
that Slicer fills in for a point list), in LPS and in RAS, on images whose affine is not the
identity, so that a sign error in LPS <-> RAS or a transposed axis shows.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from medshot.cli import main
from medshot.core.errors import MedshotError
from medshot.data.markups import FLIP, SCHEMA, points_on, read_markups, write_markups
from medshot.data.read import read_image
from medshot.data.write import save_png
from medshot.synthetic3d import LANDMARK_NAMES_3D, Phantom3D, Warp3D, grid_affine, sample_phantom

LANDMARK_NAMES = ["apex", "left notch", "right notch", "base"]


def slicer_mrk_json(names, positions, system="LPS"):
    """A point list as Slicer 5 saves it (``positions`` already in ``system``)."""
    return {
        "@schema": SCHEMA,
        "markups": [{
            "type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm", "locked": False,
            "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(names),
            "controlPoints": [
                {"id": str(i), "label": n, "description": "", "associatedNodeID": "vtkMRMLScalarVolumeNode1",
                 "position": [float(v) for v in p], "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                 "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}
                for i, (n, p) in enumerate(zip(names, positions), start=1)],
            "measurements": [],
            "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0],
                        "selectedColor": [1.0, 0.5000076295109483, 0.5000076295109483],
                        "activeColor": [0.4, 1.0, 0.0], "propertiesLabelVisibility": False,
                        "pointLabelsVisibility": True, "textScale": 3.0, "glyphType": "Sphere3D", "glyphScale": 3.0,
                        "glyphSize": 5.0, "useGlyphScale": True, "sliceProjection": False,
                        "snapMode": "toVisibleSurface"},
        }],
    }


def slicer_fcsv(names, positions, system="LPS"):
    lines = ["# Markups fiducial file version = 4.11", f"# CoordinateSystem = {system}",
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
    lines += [f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,{n},,vtkMRMLScalarVolumeNode1"
              for i, (n, p) in enumerate(zip(names, positions))]
    return "\n".join(lines) + "\n"


def oblique_affine(shape, spacing, axcodes):
    """A non-canonical grid, turned 20 degrees about the superior axis and shifted: nothing here is the identity."""
    a = np.deg2rad(20)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    turn[:3, 3] = [12.5, -30.0, 7.25]
    return turn @ grid_affine(shape, spacing, (3, -2, 4), axcodes=axcodes)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrk")
    ph = Phantom3D(60.0, seed=1)
    shape = (40, 46, 30)
    aff = oblique_affine(shape, (1.5, 1.3, 2.0), "PLI")
    image, labels = sample_phantom(ph, shape, aff)
    nib.save(nib.Nifti1Image(image, aff), root / "vol.nii.gz")
    nib.save(nib.Nifti1Image(labels, aff), root / "vol_labels.nii.gz")
    voxels = np.array([[5.0, 7.0, 3.0], [30.0, 10.0, 20.0], [12.5, 40.0, 28.0]])
    ras = voxels @ aff[:3, :3].T + aff[:3, 3]
    return {"root": root, "affine": aff, "voxels": voxels, "ras": ras, "phantom": ph}


@pytest.mark.parametrize("kind,system", [("mrk.json", "LPS"), ("mrk.json", "RAS"), ("fcsv", "LPS"), ("fcsv", "RAS")])
def test_slicer_points_become_volume_template_voxels(volume, tmp_path, kind, system, capsys):
    names = ["nasion", "left ear", "right ear"]
    pos = volume["ras"] * (FLIP if system == "LPS" else 1.0)
    path = tmp_path / f"points.{kind}"
    path.write_text(json.dumps(slicer_mrk_json(names, pos, system), indent=4) if kind == "mrk.json"
                    else slicer_fcsv(names, pos, system))
    out = tmp_path / "t.json"
    assert main(["template", str(volume["root"] / "vol.nii.gz"), "--landmarks", str(path), "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    ijk = np.array([[lm[c] for c in "ijk"] for lm in spec["landmarks"]])
    np.testing.assert_allclose(ijk, volume["voxels"], atol=2e-3)
    np.testing.assert_allclose([[lm[c] for c in "xyz"] for lm in spec["landmarks"]], volume["ras"], atol=2e-3)
    assert [lm["name"] for lm in spec["landmarks"]] == names


def test_old_fcsv_without_header_is_ras(volume, tmp_path):
    path = tmp_path / "old.fcsv"
    path.write_text("# Markups fiducial file version = 4.4\n" + "".join(
        f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,P{i},,\n"
        for i, p in enumerate(volume["ras"])))
    points = read_markups(path)
    np.testing.assert_allclose([p.ras for p in points], volume["ras"])
    assert [p.name for p in points] == ["P0", "P1", "P2"]


def test_2d_nifti_slice_with_an_affine(tmp_path):
    """A 2D NIfTI whose affine flips and scales its axes: Slicer LPS points -> the right pixels."""
    aff = np.array([[-0.8, 0, 0, 40.0], [0, 0.6, 0, -25.0], [0, 0, 3.0, 11.0], [0, 0, 0, 1]])
    img = np.random.default_rng(0).random((50, 40, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "slice.nii.gz")
    image = read_image(tmp_path / "slice.nii.gz")
    xy = np.array([[3.0, 7.0], [30.5, 44.0]])  # (column, row)
    ras = np.column_stack([xy[:, 1], xy[:, 0], np.zeros(2), np.ones(2)]) @ aff.T  # voxel (i=row, j=col, 0)
    lps = ras[:, :3] * FLIP
    path = tmp_path / "p.mrk.json"
    path.write_text(json.dumps(slicer_mrk_json(["a", "b"], lps)))
    out = tmp_path / "t.json"
    assert main(["template", str(tmp_path / "slice.nii.gz"), "--landmarks", str(path), "--out", str(out)]) == 0
    got = np.array([[lm["x"], lm["y"]] for lm in json.loads(out.read_text())["landmarks"]])
    np.testing.assert_allclose(got, xy, atol=1e-3)
    np.testing.assert_allclose(image.index_to_world(xy[:, ::-1]), ras[:, :3], atol=1e-4)  # the header stores float32


def test_png_convention_is_itk_lps(tmp_path):
    """PNGs have no geometry: LPS = (x, y, 0), spacing 1, as ITK and Slicer load them."""
    save_png(tmp_path / "p.png", (np.random.default_rng(1).random((30, 20)) * 255).astype(np.uint8))
    image = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(image.index_to_world([[9.0, 4.0]]) * FLIP, [[4.0, 9.0, 0.0]])  # (row, col)
    with pytest.raises(MedshotError, match="off the image plane"):
        points_on(image, [[-4.0, -9.0, 2.0]], ["far"])


def test_2d_localize_writes_one_mrk_json_per_target(tmp_path, template_files, phantom, capsys):
    image, mask, _ = template_files
    lps = np.column_stack([phantom.landmarks_xy, np.zeros(4)])  # the PNG convention
    path = tmp_path / "lm.mrk.json"
    path.write_text(json.dumps(slicer_mrk_json(LANDMARK_NAMES, lps)))
    tj = tmp_path / "t.json"
    assert main(["template", str(image), "--mask", str(mask), "--landmarks", str(path), "--out", str(tj)]) == 0
    lms = json.loads(tj.read_text())["landmarks"]
    np.testing.assert_allclose([[lm["x"], lm["y"]] for lm in lms], phantom.landmarks_xy, atol=1e-3)
    out = tmp_path / "loc"
    assert main(["localize", "--template", str(tj), "--out", str(out), "--quiet", str(image)]) == 0
    doc = json.loads((out / "template.mrk.json").read_text())
    check_schema_fields(doc)
    rows = list(csv.DictReader(open(out / "landmarks.csv")))
    lps_out = np.array([cp["position"] for cp in doc["markups"][0]["controlPoints"]])
    np.testing.assert_allclose(lps_out[:, :2], [[float(r["x"]), float(r["y"])] for r in rows], atol=1e-3)
    assert [cp["label"] for cp in doc["markups"][0]["controlPoints"]] == [r["landmark"] for r in rows]
    # the written file reads back as the same landmarks
    again = tmp_path / "again.json"
    assert main(["template", str(image), "--landmarks", str(out / "template.mrk.json"), "--out", str(again)]) == 0
    np.testing.assert_allclose([[lm["x"], lm["y"]] for lm in json.loads(again.read_text())["landmarks"]],
                               [[float(r["x"]), float(r["y"])] for r in rows], atol=1e-3)


def check_schema_fields(doc):
    """The parts of markups schema v1.0.3 a reader relies on, with their types and enumerations."""
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#") and isinstance(doc["markups"], list)
    markup = doc["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS" and markup["coordinateUnits"] == "mm"
    for cp in markup["controlPoints"]:
        assert isinstance(cp["id"], str) and isinstance(cp["label"], str) and isinstance(cp["description"], str)
        assert len(cp["position"]) == 3 and all(isinstance(v, float) for v in cp["position"])
        assert len(cp["orientation"]) == 9 and cp["positionStatus"] in ("undefined", "preview", "defined")
        assert all(isinstance(cp[k], bool) for k in ("selected", "locked", "visibility"))


def test_volume_localize_writes_lps(volume, tmp_path, capsys):
    """The .mrk.json of a volume target holds landmarks.csv's RAS mm with x and y negated."""
    ph = volume["phantom"]
    t_shape = (44, 44, 34)
    t_aff = grid_affine(t_shape, (1.4, 1.4, 1.8), axcodes="PLI")
    image, labels = sample_phantom(ph, t_shape, t_aff)
    nib.save(nib.Nifti1Image(image, t_aff), tmp_path / "tv.nii.gz")
    nib.save(nib.Nifti1Image(labels, t_aff), tmp_path / "tv_labels.nii.gz")
    path = tmp_path / "lm.mrk.json"
    path.write_text(json.dumps(slicer_mrk_json(list(LANDMARK_NAMES_3D), ph.landmarks * FLIP)))
    tj = tmp_path / "t.json"
    assert main(["template", str(tmp_path / "tv.nii.gz"), "--mask", str(tmp_path / "tv_labels.nii.gz"),
                 "--landmarks", str(path), "--out", str(tj)]) == 0
    shape = (36, 44, 26)
    aff = grid_affine(shape, (1.6, 1.35, 2.4), (3, -2, 4), axcodes="LAI")
    target, _ = sample_phantom(ph, shape, aff, Warp3D(np.eye(3) * 1.03, np.array([2.0, -1.0, 1.5]), 1.0, 50.0))
    nib.save(nib.Nifti1Image(target, aff), tmp_path / "target.nii.gz")
    out = tmp_path / "loc"
    assert main(["localize", "--template", str(tj), "--out", str(out), "--work-spacing", "1.8", "--quiet",
                 str(tmp_path / "target.nii.gz")]) == 0
    doc = json.loads((out / "target.mrk.json").read_text())
    check_schema_fields(doc)
    rows = list(csv.DictReader(open(out / "landmarks.csv")))
    ras = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in rows])
    lps = np.array([cp["position"] for cp in doc["markups"][0]["controlPoints"]])
    np.testing.assert_allclose(lps, ras * FLIP, atol=1e-3)
    vol = read_image(tmp_path / "target.nii.gz")
    ijk = np.array([[float(r[c]) for c in "ijk"] for r in rows])
    np.testing.assert_allclose(vol.index_to_source(vol.world_to_index(lps * FLIP)), ijk, atol=1e-2)


def test_write_then_read_round_trip(tmp_path):
    ras = np.array([[1.5, -2.25, 3.0], [-10.0, 20.0, -30.0]])
    write_markups(tmp_path / "x.mrk.json", ["a", "b"], ras, ["d1", "d2"])
    back = read_markups(tmp_path / "x.mrk.json")
    np.testing.assert_allclose([p.ras for p in back], ras)
    assert [p.name for p in back] == ["a", "b"]


@pytest.mark.parametrize("content,problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"markups": [{"type": "Line", "controlPoints": []}]}), "no point list"),
    (json.dumps(slicer_mrk_json(["a", "a"], [[0, 0, 0], [1, 1, 1]])), "repeat"),
    (json.dumps(slicer_mrk_json(["a"], [[0, 0, 0]], system="IJK")), "coordinateSystem"),
    (json.dumps({"@schema": SCHEMA, "markups": []}), "no defined fiducial"),
])
def test_bad_markups_fail_with_one_line(tmp_path, template_files, content, problem, capsys):
    image = template_files[0]
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    assert main(["template", str(image), "--landmarks", str(path), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.mrk.json" in err and problem in err
    assert not (tmp_path / "t.json").exists()


def test_point_off_the_png_plane_is_refused(tmp_path, template_files, capsys):
    path = tmp_path / "off.mrk.json"
    path.write_text(json.dumps(slicer_mrk_json(["apex"], [[10.0, 10.0, 5.0]])))
    assert main(["template", str(template_files[0]), "--landmarks", str(path), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "'apex'" in err and "off the image plane" in err and "off.mrk.json" in err


def test_base_install_imports_no_qt():
    """``pip install medshot`` stays free of Qt: the CLI (annotate included) and markups import none of it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    deps = text[text.index("dependencies = ["):].split("]", 1)[0].splitlines()[1:]  # tomllib needs Python 3.11
    assert not [d for d in deps if any(q in d.lower() for q in ("napari", "qt", "pyside", "vispy"))]
    code = ("import sys, medshot, medshot.cli, medshot.data.markups; medshot.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', "
            "'vispy', 'superqt')]; assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr
