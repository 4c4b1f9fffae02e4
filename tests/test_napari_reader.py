"""The napari plugin's manifest, reader (every format medshot reads) and writers."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

napari = pytest.importorskip("napari")

import nibabel as nib  # noqa: E402
from napari_support import MANIFEST, register_plugin  # noqa: E402
from PIL import Image  # noqa: E402

from medshot.cli import main  # noqa: E402
from medshot.data.markups import FLIP, read_markups  # noqa: E402
from medshot.napari.layers import frame_of  # noqa: E402
from medshot.synthetic3d import Phantom3D, grid_affine, sample_phantom, write_dicom_series  # noqa: E402


@pytest.fixture(autouse=True)
def plugin():
    register_plugin()


def _ramp(shape):
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return 100 * i + 10 * j + k  # every voxel distinct, so any reordering shows


def test_manifest_validates():
    """``npe2 validate medshot`` once medshot is installed with its entry point; the file itself otherwise."""
    installed = any(ep.name == "medshot" and ep.value == "medshot.napari:napari.yaml"
                    for ep in importlib.metadata.entry_points(group="napari.manifest"))
    target = "medshot" if installed else str(MANIFEST)
    run = subprocess.run([sys.executable, "-m", "npe2", "validate", target, "--imports"], capture_output=True,
                         text=True)
    assert run.returncode == 0 and "valid" in run.stdout, run.stdout + run.stderr


def test_raster_formats_open_as_images(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    raw = (np.random.default_rng(0).random((30, 40)) * 4000).astype(np.uint16)
    Image.fromarray((raw // 16).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((raw // 16).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(raw).save(tmp_path / "a.tif")
    for name in ("a.png", "a.jpg", "a.tif"):
        (layer,) = viewer.open(str(tmp_path / name), plugin="medshot")
        assert layer.data.shape == (30, 40) and tuple(layer.scale) == (1.0, 1.0)
        assert frame_of(layer).source.kind == "raster"
    np.testing.assert_array_equal(layer.data, raw)  # the 16-bit TIFF, values kept


def test_nifti_2d_keeps_its_pixel_spacing(make_napari_viewer, tmp_path):
    aff = np.diag([0.7, 0.45, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.arange(12 * 20, dtype=np.float32).reshape(12, 20, 1), aff), tmp_path / "s.nii.gz")
    (layer,) = make_napari_viewer().open(str(tmp_path / "s.nii.gz"), plugin="medshot")
    assert layer.data.shape == (12, 20)
    np.testing.assert_allclose(layer.scale, [0.7, 0.45])


def _check_volume_geometry(layer, source_array, affine):
    """Each displayed voxel holds the source voxel that lies at its napari world position (LPS mm, z y x)."""
    rng = np.random.default_rng(1)
    shape = np.array(layer.data.shape)
    for index in rng.integers(0, shape, size=(12, 3)):
        world = np.asarray(layer.data_to_world(index), float)  # (S, P, L)
        ras = world[::-1] * FLIP
        ijk = np.linalg.solve(affine[:3, :3], ras - affine[:3, 3])
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
        assert layer.data[tuple(index)] == source_array[tuple(np.round(ijk).astype(int))]


def test_nifti_volume_is_shown_axial_in_lps_mm(make_napari_viewer, tmp_path):
    shape = (6, 7, 5)
    aff = grid_affine(shape, (2.0, 1.5, 3.0), (4, -2, 7), axcodes="PLI")
    data = _ramp(shape)
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    (layer,) = make_napari_viewer().open(str(tmp_path / "v.nii.gz"), plugin="medshot")
    # canonical R, A, S = source axes 1, 0, 2 (sizes 7, 6, 5): shown as (S, P, L) = (5, 6, 7)
    assert layer.data.shape == (5, 6, 7)
    np.testing.assert_allclose(layer.scale, [3.0, 2.0, 1.5])
    assert [str(u) for u in layer.units] == ["millimeter"] * 3
    _check_volume_geometry(layer, data, aff)


def test_dicom_series_folder_and_dicom_file(make_napari_viewer, tmp_path):
    shape = (8, 9, 6)  # (rows, columns, slices): rows run posterior, columns to the patient's right
    aff = grid_affine(shape, (0.9, 0.8, 2.5), (10, 20, -30), axcodes="PRI")
    data = _ramp(shape)
    files = write_dicom_series(data, aff, tmp_path / "series", slope=1.0, intercept=0.0)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series"), plugin="medshot")
    assert layer.data.shape == (6, 8, 9)
    _check_volume_geometry(layer, data, aff)
    # one slice file alone is a 2D image: (rows, columns) scaled by PixelSpacing
    (single,) = viewer.open(str(files[2]), plugin="medshot")
    assert single.data.shape == (8, 9) and frame_of(single).source.kind == "dicom"
    np.testing.assert_allclose(single.scale, [0.9, 0.8])
    np.testing.assert_array_equal(single.data, data[:, :, 2])


def test_2d_template_json_opens_as_its_layers(make_napari_viewer, tmp_path, template_files, phantom, capsys):
    image, mask, lm_csv = template_files
    tj = tmp_path / "t.json"
    assert main(["template", str(image), "--mask", str(mask), "--landmarks", str(lm_csv), "--out", str(tj)]) == 0
    layers = make_napari_viewer().open(str(tj), plugin="medshot")
    by_name = {layer.name: layer for layer in layers}
    assert set(by_name) == {"template", "mask", "prompts", "landmarks"}
    np.testing.assert_array_equal(by_name["mask"].data, phantom.mask)
    np.testing.assert_allclose(by_name["landmarks"].data[:, ::-1], phantom.landmarks_xy, atol=1e-3)
    assert list(by_name["landmarks"].features["name"]) == ["apex", "left notch", "right notch", "base"]
    spec = json.loads(tj.read_text())
    prompts = by_name["prompts"]
    assert len(prompts.data) == sum(len(p["positive"]) + len(p["negative"]) for p in spec["prompts"])
    assert set(prompts.features["label"]) == {1, 2} and prompts.features["positive"].sum() == 10


@pytest.fixture(scope="module")
def volume_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("vt")
    ph = Phantom3D(60.0, seed=1)
    shape = (30, 32, 24)
    aff = grid_affine(shape, (2.0, 1.9, 2.5), axcodes="LIP")
    image, labels = sample_phantom(ph, shape, aff)
    nib.save(nib.Nifti1Image(image, aff), root / "v.nii.gz")
    nib.save(nib.Nifti1Image(labels, aff), root / "v_labels.nii.gz")
    (root / "lm.csv").write_text("name,i,j,k\na,3,4,5\nb,20.5,10,7\n")
    assert main(["template", str(root / "v.nii.gz"), "--mask", str(root / "v_labels.nii.gz"), "--landmarks",
                 str(root / "lm.csv"), "--out", str(root / "t.json")]) == 0
    return root


def test_volume_template_and_its_writers(make_napari_viewer, volume_template, tmp_path):
    root = volume_template
    viewer = make_napari_viewer()
    layers = {layer.name: layer for layer in viewer.open(str(root / "t.json"), plugin="medshot")}
    assert set(layers) == {"v", "mask", "prompts", "landmarks"}  # prompt points sampled from the mask, as in 2D
    assert layers["prompts"].data.shape[1] == 3
    frame = frame_of(layers["v"])
    ijk = frame.source.index_to_source(frame.points_from_display(layers["landmarks"].data))  # the file's voxels
    np.testing.assert_allclose(ijk, [[3, 4, 5], [20.5, 10, 7]], atol=1e-9)
    # label map -> .nii.gz in the source geometry, exactly the file the template was made from
    written = layers["mask"].save(str(tmp_path / "m.nii.gz"), plugin="medshot")
    assert written == [str(tmp_path / "m.nii.gz")]
    src, out = nib.load(root / "v_labels.nii.gz"), nib.load(tmp_path / "m.nii.gz")
    np.testing.assert_allclose(out.affine, src.affine)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(src.dataobj))
    # landmarks -> the CSV `medshot template` reads, and a Slicer file in LPS mm
    layers["landmarks"].save(str(tmp_path / "lm.csv"), plugin="medshot")
    rows = list(csv.DictReader(open(tmp_path / "lm.csv")))
    assert [r["name"] for r in rows] == ["a", "b"]
    np.testing.assert_allclose([[float(r[c]) for c in "ijk"] for r in rows], [[3, 4, 5], [20.5, 10, 7]], atol=1e-3)
    layers["landmarks"].save(str(tmp_path / "lm.mrk.json"), plugin="medshot")
    ras = np.array([p.ras for p in read_markups(tmp_path / "lm.mrk.json")])
    aff = src.affine
    np.testing.assert_allclose(ras, np.array([[3, 4, 5], [20.5, 10, 7]]) @ aff[:3, :3].T + aff[:3, 3], atol=1e-3)


def test_2d_writers(make_napari_viewer, tmp_path, template_files, phantom, capsys):
    image, mask, lm_csv = template_files
    tj = tmp_path / "t.json"
    assert main(["template", str(image), "--mask", str(mask), "--landmarks", str(lm_csv), "--out", str(tj)]) == 0
    layers = {layer.name: layer for layer in make_napari_viewer().open(str(tj), plugin="medshot")}
    layers["mask"].save(str(tmp_path / "m.png"), plugin="medshot")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), phantom.mask)
    layers["landmarks"].save(str(tmp_path / "l.csv"), plugin="medshot")
    rows = list(csv.DictReader(open(tmp_path / "l.csv")))
    np.testing.assert_allclose([[float(r["x"]), float(r["y"])] for r in rows], phantom.landmarks_xy, atol=1e-3)
    layers["landmarks"].save(str(tmp_path / "l.mrk.json"), plugin="medshot")
    frame = frame_of(layers["template"])
    np.testing.assert_allclose([p.ras for p in read_markups(tmp_path / "l.mrk.json")],
                               frame.source.index_to_world(phantom.landmarks_xy[:, ::-1]), atol=1e-3)


def test_slicer_markups_open_in_lps(make_napari_viewer, tmp_path):
    from test_markups import slicer_fcsv, slicer_mrk_json

    (tmp_path / "p.mrk.json").write_text(json.dumps(slicer_mrk_json(["a", "b"], [[1, 2, 3], [4, 5, 6]])))
    (tmp_path / "q.fcsv").write_text(slicer_fcsv(["c"], [[-1.0, -2.0, 0.0]], system="RAS"))
    viewer = make_napari_viewer()
    (points,) = viewer.open(str(tmp_path / "p.mrk.json"), plugin="medshot")
    np.testing.assert_allclose(points.data, [[3, 2, 1], [6, 5, 4]])  # (z, y, x) LPS
    assert list(points.features["name"]) == ["a", "b"]
    (flat,) = viewer.open(str(tmp_path / "q.fcsv"), plugin="medshot")
    np.testing.assert_allclose(flat.data, [[2.0, 1.0]])  # every z is 0: a 2D (y, x) LPS layer


def test_reader_declines_what_medshot_does_not_read(tmp_path):
    from medshot.napari.reader import get_reader

    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for name in ("notes.json", "x.txt", "empty", "missing.png"):
        assert get_reader(str(tmp_path / name)) is None
