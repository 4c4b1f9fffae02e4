"""Bad input everywhere is one line and exit 2 (or, for a volume's data, one failed target); labels round-trip.

Rows of issue 10's table: all-NaN images (row 3), labels above 255 (row 9), 0/255 masks (row 10),
read-only --out, unreadable template JSON, 2x2 and 4x4 images (row 11), ``hf download`` (row 12).
"""

from __future__ import annotations

import builtins
import csv
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from batch_helpers import write_targets
from PIL import Image

from medshot.cli import main
from medshot.synthetic3d import Phantom3D, grid_affine, sample_phantom

FAST = ["--work-size", "64", "--quiet"]
VOLUME = ["--work-spacing", "2.0", "--quiet"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("medshot: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def rows_of(table: Path) -> list[dict]:
    with open(table, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def template_json(tmp_path, template_files, capsys):
    image, mask, landmarks = template_files
    out = tmp_path / "template.json"
    assert run(["template", image, "--mask", mask, "--landmarks", landmarks, "--out", out], capsys)[0] == 0
    return out


# -- row 3: all-NaN images -----------------------------------------------------------------------------


def test_all_nan_2d_target_and_template_are_refused(tmp_path, template_files, template_json, capsys):
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((64, 64), np.nan, np.float32), np.eye(4)), nan)
    out = tmp_path / "out"
    code, _, err = run(["segment", "--template", template_json, "--out", out, nan, *FAST], capsys)
    assert code == 2 and empty(out)
    one_error_line(err, "nan.nii.gz", "no finite value")
    code, _, err = run(["template", nan, "--landmarks", template_files[2], "--out", tmp_path / "t2.json"], capsys)
    assert code == 2 and not (tmp_path / "t2.json").exists()
    one_error_line(err, "nan.nii.gz", "no finite value")


def test_partly_nan_target_is_treated_as_missing_and_said(tmp_path, template_json, phantom, capsys):
    image = phantom.image.astype(np.float32).copy()
    image[:20] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "holes.nii.gz")
    out = tmp_path / "out"
    code, _, err = run(["segment", "--template", template_json, "--out", out, tmp_path / "holes.nii.gz", *FAST],
                       capsys)
    assert code == 0, err
    note = [ln for ln in err.splitlines() if "holes.nii.gz" in ln]
    assert len(note) == 1 and "NaN or Inf" in note[0] and "treated as missing" in note[0]
    assert (out / "holes_mask.nii.gz").exists()


def test_constant_and_tiny_images_are_refused(tmp_path, template_json, capsys):
    cases = {"flat.png": (np.full((64, 64), 80, np.uint8), "constant"),
             "two.png": (np.array([[0, 255], [255, 0]], np.uint8), "at least 8 pixels"),
             "four.png": (np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, "at least 8 pixels")}
    out = tmp_path / "out"
    for name, (array, words) in cases.items():
        Image.fromarray(array).save(tmp_path / name)
        for command in ("segment", "localize"):
            code, _, err = run([command, "--template", template_json, "--out", out, tmp_path / name, *FAST], capsys)
            assert code == 2 and empty(out), err
            one_error_line(err, name, words)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A small template volume with a 0/255 label map, a good target and an all-NaN target."""
    root = tmp_path_factory.mktemp("vols")
    ph = Phantom3D(50.0, seed=2)
    shape, aff = (36, 36, 28), grid_affine((36, 36, 28), (1.5, 1.5, 1.8))
    image, labels = sample_phantom(ph, shape, aff)
    nib.save(nib.Nifti1Image(image, aff), root / "t.nii.gz")
    nib.save(nib.Nifti1Image(((labels == 1) * 255).astype(np.uint8), aff), root / "t_labels.nii.gz")
    targets = root / "targets"
    targets.mkdir()
    nib.save(nib.Nifti1Image((image * 1000).astype(np.int16), aff), targets / "good.nii.gz")
    nib.save(nib.Nifti1Image(np.full(shape, np.nan, np.float32), aff), targets / "nan.nii.gz")
    return root


def test_volume_nan_target_fails_alone_and_255_labels_round_trip(volumes, tmp_path, capsys):
    t = tmp_path / "t.json"
    code, _, err = run(["template", volumes / "t.nii.gz", "--mask", volumes / "t_labels.nii.gz", "--out", t], capsys)
    assert code == 0, err
    out = tmp_path / "out"
    code, stdout, err = run(["segment", "--template", t, "--out", out, volumes / "targets", *VOLUME], capsys)
    # a volume's data is read when it is processed (headers are checked up front): that target fails alone
    assert code == 1 and "1 failed" in stdout and "Traceback" not in err
    rows = {Path(r["target"]).name: r for r in rows_of(out / "results.csv")}
    assert rows["nan.nii.gz"]["status"] == "failed" and "no finite value" in rows["nan.nii.gz"]["reason"]
    assert not (out / "nan_mask.nii.gz").exists()
    mask = np.asanyarray(nib.load(out / "good_mask.nii.gz").dataobj)
    assert set(np.unique(mask)) == {0, 255} and rows["good.nii.gz"]["label"] == "255"
    # the same batch loop as 2D: --resume retries the failed volume only, in two worker processes
    code, stdout, _ = run(["segment", "--template", t, "--out", out, "--resume", "--workers", "2",
                           volumes / "targets", *VOLUME], capsys)
    assert code == 1 and "1 targets:" in stdout and "1 skipped" in stdout
    # the same all-NaN volume as a template is refused before anything is written
    code, _, err = run(["template", volumes / "targets" / "nan.nii.gz", "--mask", volumes / "t_labels.nii.gz",
                        "--out", tmp_path / "bad.json"], capsys)
    assert code == 2 and not (tmp_path / "bad.json").exists()
    one_error_line(err, "nan.nii.gz", "no finite value")


# -- rows 9 and 10: label values -----------------------------------------------------------------------


def test_labels_above_255_round_trip_in_2d(tmp_path, phantom, capsys):
    Image.fromarray((phantom.image * 255).astype(np.uint8)).save(tmp_path / "t.png")
    labels = np.select([phantom.mask == 1, phantom.mask == 2], [1000, 7], 0).astype(np.uint16)
    Image.fromarray(labels).save(tmp_path / "t_mask.png")  # a 16-bit PNG
    code, _, err = run(["template", tmp_path / "t.png", "--mask", tmp_path / "t_mask.png", "--out",
                        tmp_path / "t.json"], capsys)
    assert code == 0, err
    targets = write_targets(tmp_path / "targets", phantom, 1)
    image = np.array(Image.open(targets[0]), np.float32)
    nib.save(nib.Nifti1Image(image.astype(np.int16), np.eye(4)), tmp_path / "targets" / "scan.nii.gz")
    out = tmp_path / "out"
    code, _, err = run(["segment", "--template", tmp_path / "t.json", "--out", out, tmp_path / "targets", *FAST],
                       capsys)
    assert code == 0, err
    png = Image.open(out / "case01_mask.png")
    assert png.mode.startswith("I") and set(np.unique(np.array(png))) == {0, 7, 1000}
    nii = np.asanyarray(nib.load(out / "scan_mask.nii.gz").dataobj)
    assert nii.dtype == np.uint16 and set(np.unique(nii)) == {0, 7, 1000}
    assert sorted({r["label"] for r in rows_of(out / "results.csv")}) == ["1000", "7"]


def test_binary_255_mask_round_trips_to_png_and_nifti(tmp_path, phantom, capsys):
    Image.fromarray((phantom.image * 255).astype(np.uint8)).save(tmp_path / "t.png")
    Image.fromarray(((phantom.mask > 0) * 255).astype(np.uint8)).save(tmp_path / "t_mask.png")
    assert run(["template", tmp_path / "t.png", "--mask", tmp_path / "t_mask.png", "--out", tmp_path / "t.json"],
               capsys)[0] == 0
    targets = write_targets(tmp_path / "targets", phantom, 1)
    nib.save(nib.Nifti1Image(np.array(Image.open(targets[0])).astype(np.int16), np.eye(4)),
             tmp_path / "targets" / "scan.nii.gz")
    out = tmp_path / "out"
    assert run(["segment", "--template", tmp_path / "t.json", "--out", out, tmp_path / "targets", *FAST],
               capsys)[0] == 0
    assert set(np.unique(np.array(Image.open(out / "case01_mask.png")))) == {0, 255}
    assert set(np.unique(np.asanyarray(nib.load(out / "scan_mask.nii.gz").dataobj))) == {0, 255}


# -- row 11: permissions ---------------------------------------------------------------------------------


def _denied(path) -> PermissionError:
    return PermissionError(13, "Permission denied", str(path))


def make_read_only(folder: Path, monkeypatch) -> None:
    """chmod 0555; where that does not stop this process (root, as in CI), refuse writes there the same way."""
    folder.chmod(0o555)
    try:
        (folder / ".probe").write_text("x")
    except PermissionError:
        return
    (folder / ".probe").unlink()
    real_open, real_mkdir = os.open, os.mkdir

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise _denied(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise _denied(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def make_unreadable(file: Path, monkeypatch) -> None:
    """chmod 000; where that does not stop this process (root), refuse reading it the same way."""
    file.chmod(0)
    try:
        file.read_bytes()
    except PermissionError:
        return
    real = io.open

    def guarded(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and Path(path) == file:
            raise _denied(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded)
    monkeypatch.setattr(builtins, "open", guarded)


def test_read_only_out_is_one_line(tmp_path, template_files, template_json, phantom, capsys, monkeypatch):
    (a,) = write_targets(tmp_path / "targets", phantom, 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    make_read_only(ro, monkeypatch)
    try:
        code, _, err = run(["segment", "--template", template_json, "--out", ro, a, *FAST], capsys)
        assert code == 2
        one_error_line(err, str(ro), "cannot write", "Permission denied")
        code, _, err = run(["segment", "--template", template_json, "--out", ro / "sub", a, *FAST], capsys)
        assert code == 2
        one_error_line(err, "ro", "Permission denied")
        code, _, err = run(["template", template_files[0], "--mask", template_files[1], "--out", ro / "t.json"],
                           capsys)
        assert code == 2
        one_error_line(err, "Permission denied")
    finally:
        ro.chmod(0o755)
    assert not any(ro.iterdir())


def test_unreadable_template_json_is_one_line(tmp_path, template_json, phantom, capsys, monkeypatch):
    (a,) = write_targets(tmp_path / "targets", phantom, 1)
    make_unreadable(template_json, monkeypatch)
    try:
        for command in ("segment", "localize"):
            code, _, err = run([command, "--template", template_json, "--out", tmp_path / "out", a, *FAST], capsys)
            assert code == 2 and not (tmp_path / "out").exists()
            one_error_line(err, "template.json", "cannot read the template", "Permission denied")
    finally:
        template_json.chmod(0o644)


# -- DICOM codecs ----------------------------------------------------------------------------------------


def test_compressed_dicom_without_its_decoder_names_the_package(tmp_path, template_json, capsys, monkeypatch):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless, generate_uid

    decoder = get_decoder(JPEGLSLossless)
    # the check is about a missing decoder: with the dicom extra installed, take its plugins away
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pyjpegls": ("pyjpegls",)})
    assert not decoder.is_available
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless
    ds = FileDataset(str(tmp_path / "ls.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.Rows, ds.Columns = "CT", 16, 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 200])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "ls.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    code, _, err = run(["segment", "--template", template_json, "--out", out, tmp_path / "ls.dcm", *FAST], capsys)
    assert code == 2 and empty(out)
    one_error_line(err, "ls.dcm", "JPEG-LS", 'pip install "medshot[dicom]"', "pip install pyjpegls")


# -- row 12: hf download ------------------------------------------------------------------------------


def test_weights_messages_name_the_current_hub_command():
    from medshot.models.weights import missing_weights_message

    text = missing_weights_message("dinov2_s14", "facebook/dinov2-small")
    assert "`hf download facebook/dinov2-small`" in text and "huggingface-cli" not in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    docs = [p.read_text() for p in (Path(__file__).resolve().parents[1] / "docs").glob("*.md")]
    assert "hf download" in readme and not any("huggingface-cli" in t for t in [readme, *docs])
