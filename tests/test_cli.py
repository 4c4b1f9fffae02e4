"""The command line: outputs in the documented formats, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medshot.cli import main
from medshot.synthetic import random_warp


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def template_json(tmp_path, template_files, capsys):
    image, mask, landmarks = template_files
    out = tmp_path / "template.json"
    code, _, err = run(["template", image, "--mask", mask, "--landmarks", landmarks, "--out", out], capsys)
    assert code == 0, err
    return out


@pytest.fixture()
def targets(tmp_path, phantom):
    folder = tmp_path / "targets"
    folder.mkdir()
    for seed in (1, 2):
        case, _ = random_warp(phantom, seed=seed)
        Image.fromarray((case.image * 255).astype(np.uint8)).save(folder / f"case{seed}.png")
    return folder


def test_template_json_contract(template_json, template_files):
    spec = json.loads(template_json.read_text())
    assert spec["image"] == "template.png" and spec["mask"] == "template_mask.png"
    assert [lm["name"] for lm in spec["landmarks"]][:2] == ["apex", "left notch"]
    assert sorted(p["label"] for p in spec["prompts"]) == [1, 2]
    mask = np.array(Image.open(template_files[1]))
    for p in spec["prompts"]:
        assert len(p["positive"]) == 5 and len(p["negative"]) == 4
        for x, y in p["positive"]:
            assert mask[round(y), round(x)] == p["label"]
        for x, y in p["negative"]:
            assert mask[round(y), round(x)] != p["label"]


def test_localize_and_segment_write_documented_files(tmp_path, template_json, targets, capsys):
    out = tmp_path / "out"
    code, _, err = run(["localize", "--template", template_json, "--out", out, "--quiet", targets], capsys)
    assert code == 0, err
    with open(out / "landmarks.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["target", "landmark", "x", "y", "confidence", "status", "reason"]
    assert len(rows) == 2 * 4
    code, _, err = run(["segment", "--template", template_json, "--out", out, "--quiet", targets], capsys)
    assert code == 0, err
    for stem in ("case1", "case2"):
        mask = np.array(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == np.array(Image.open(targets / f"{stem}.png")).shape
        assert set(np.unique(mask)) <= {0, 1, 2} and (mask == 1).any() and (mask == 2).any()
        assert (out / f"{stem}_overlay.png").exists()
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["target", "label", "area_px", "score", "seconds", "status", "reason"]
    assert len(rows) == 4 and all(int(r["area_px"]) > 0 for r in rows)
    assert not list(out.glob("*.part"))


def test_nifti_target_gets_nifti_mask_with_its_affine(tmp_path, template_json, phantom, capsys):
    case, _ = random_warp(phantom, seed=3)
    affine = np.diag([0.7, 0.8, 1.0, 1.0])
    affine[:3, 3] = [10, -5, 3]
    nib.save(nib.Nifti1Image((case.image * 1000).astype(np.int16), affine), tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    code, _, err = run(["segment", "--template", template_json, "--out", out, tmp_path / "scan.nii.gz"], capsys)
    assert code == 0, err
    written = nib.load(out / "scan_mask.nii.gz")
    assert np.allclose(written.affine, affine)
    assert written.shape[:2] == case.image.shape and (np.asarray(written.dataobj) > 0).any()


def test_dicom_and_16bit_inputs_are_read(tmp_path, phantom):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medshot.data.read import read_image

    raw = (phantom.image * 4000).astype(np.uint16)
    Image.fromarray(raw).save(tmp_path / "x16.png")
    assert read_image(tmp_path / "x16.png").array.max() == pytest.approx(raw.max())
    Image.fromarray(raw).save(tmp_path / "x16.tif")
    assert read_image(tmp_path / "x16.tif").array.shape == raw.shape

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.Rows, ds.Columns = "CT", raw.shape[0], raw.shape[1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = raw.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "x.dcm")
    assert image.kind == "dicom"
    assert image.array.min() == pytest.approx(raw.min() - 1024.0)
    del pydicom


def _no_outputs(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def _write_bad_inputs(tmp_path, template_files):
    image, mask, landmarks = template_files
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(image.read_bytes()[:300])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    small_mask = tmp_path / "small_mask.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(small_mask)
    outside = tmp_path / "outside.csv"
    outside.write_text("name,x,y\nnose,5000,3\n")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    return truncated, garbage, small_mask, outside, empty


def test_bad_inputs_fail_with_one_line_naming_the_file(tmp_path, template_files, template_json, capsys):
    image, mask, landmarks = template_files
    truncated, garbage, small_mask, outside, empty = _write_bad_inputs(tmp_path, template_files)
    out = tmp_path / "bad_out"
    cases = [
        (["template", tmp_path / "missing.png", "--out", out / "t.json"], "missing.png", "not found"),
        (["template", image, "--mask", small_mask, "--out", out / "t.json"], "small_mask.png", "10x10"),
        (["template", image, "--mask", mask, "--labels", "1,7", "--out", out / "t.json"], "template_mask.png",
         "label 7 is absent"),
        (["template", image, "--landmarks", outside, "--out", out / "t.json"], "template.png", "outside"),
        (["segment", "--template", template_json, "--out", out, truncated], "truncated.png", "cannot read"),
        (["segment", "--template", template_json, "--out", out, garbage], "garbage.png", "cannot read"),
        (["localize", "--template", template_json, "--out", out, empty], "empty_folder", "no image"),
        (["localize", "--template", tmp_path / "nope.json", "--out", out, image], "nope.json", "not found"),
    ]
    for args, name, words in cases:
        code, stdout, err = run(args, capsys)
        assert code == 2, (args, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and name in lines[0] and words in lines[0], (args, err)
        assert "Traceback" not in err
        assert _no_outputs(out), list(out.iterdir())


def test_one_bad_target_among_good_ones_writes_nothing(tmp_path, template_files, template_json, targets, capsys):
    truncated, *_ = _write_bad_inputs(tmp_path, template_files)
    out = tmp_path / "out"
    code, _, err = run(["segment", "--template", template_json, "--out", out, targets, truncated], capsys)
    assert code == 2 and "truncated.png" in err
    assert _no_outputs(out)


def test_label_in_template_json_absent_from_mask(tmp_path, template_json, capsys):
    spec = json.loads(template_json.read_text())
    spec["labels"]["9"] = "ghost"
    template_json.write_text(json.dumps(spec))
    code, _, err = run(["localize", "--template", template_json, "--out", tmp_path / "o", template_json.parent /
                        "template.png"], capsys)
    assert code == 2 and "label 9" in err and "absent" in err


def test_bad_window_and_segmenter_weights_are_one_line_errors(tmp_path, template_files, template_json, capsys):
    image = template_files[0]
    spec = json.loads(template_json.read_text())
    for window, words in (([40], "two numbers"), ([240, -160], "low < high")):
        template_json.write_text(json.dumps({**spec, "window": window}))
        code, _, err = run(["localize", "--template", template_json, "--out", tmp_path / "o", image], capsys)
        assert code == 2 and words in err and "template.json" in err and "Traceback" not in err, err
    template_json.write_text(json.dumps(spec))
    code, _, err = run(["segment", "--template", template_json, "--out", tmp_path / "o", "--segmenter", "classical",
                        "--segmenter-weights", str(tmp_path), image], capsys)
    assert code == 2 and "--segmenter-weights" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_input_is_never_overwritten(tmp_path, template_files, capsys):
    image, mask, _ = template_files
    before = image.read_bytes()
    code, _, err = run(["template", image, "--mask", mask, "--out", image], capsys)
    assert code == 2 and "overwrite" in err
    assert image.read_bytes() == before


def test_backbones_lists_classical_as_ready(capsys):
    code, out, _ = run(["backbones"], capsys)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("classical"))
    assert "yes" in line
