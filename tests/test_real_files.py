"""Real files written by other tools: every DICOM and NIfTI test file shipped inside the installed
pydicom and nibabel packages is read or refused in one line (``medshot check``), and every file
read makes a template that finds itself (landmarks within a pixel, Dice 1).

The files come from the installed packages' folders, never from ``pydicom.data.get_testdata_files``
(which downloads more). Files whose decoded pixels and geometry are identical (one image stored
with several transfer syntaxes) are run once; the check of each asserts it is identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from real_files import box_mask, centre, corpus_roots, fingerprint, nibabel_files, pydicom_files, structured_spot

from medshot.cli import main
from medshot.cli.check import candidates, check_one
from medshot.core.errors import MedshotError
from medshot.data.read import read_image
from medshot.data.template import Template
from medshot.data.write import save_png

REPO = Path(__file__).resolve().parents[1]
# A template run on its own image must find its landmarks again within this distance (pixels/voxels) ...
SELF_DISTANCE = 1.0
# ... and carry its label map exactly (the "Dice 1").
SELF_DICE = 1.0


def _ident(path: Path) -> str:
    for root in corpus_roots():
        if root == path or root in path.parents:
            return f"{root.parents[1].name if root.name == 'data' else root.parents[0].name}/{path.relative_to(root)}"
    return str(path)


CORPUS = candidates([str(r) for r in corpus_roots()])


def _read_quietly(path: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path, **kw)


def _readable() -> dict[str, list[Path]]:
    """Fingerprint -> the corpus paths medshot reads into those pixels (first one is run)."""
    groups: dict[str, list[Path]] = {}
    for path in CORPUS:
        try:
            image = _read_quietly(path)
        except MedshotError:
            continue
        groups.setdefault(fingerprint(image), []).append(path)
        VOLUMES.update([path] if image.ndim == 3 else [])
    return groups


VOLUMES: set[Path] = set()
READABLE = _readable()
# Volumes take 5-100 s each here (2D files about 1-4 s): marked slow, so that `-m "not slow"` leaves them out.
# Known misses, measured and reported in issue 21's closing note and docs/real-files.md. On dose grids of
# 10 x 10 pixels, upsampled 13x onto the working grid, the edge-agreement criterion peaks at a placement
# 1.7 pixels off (Dice 0.42, flagged at score 0.32). Colour bars are one-dimensional: the criterion (NGF
# with an edge-noise term) rewards stretching or sliding along them, by 0.4-0.9 % over no motion on these
# four, past the 0.5 % tie; a 1 % tie moved the tune half both ways. These are near-ties, so which of the
# bar images miss can change with rounding: not strict.
BARS = "colour bars: a stretch or slide along the bars verifies better than no motion"
KNOWN_MISSES = {"rtdose_1frame.dcm": "10 x 10 pixel dose grid: verification peaks off place",
                "rtdose.dcm": "10 x 10 pixel dose grid: verification peaks off place",
                "SC_rgb_dcmtk_+eb+cy+n1.dcm": BARS, "SC_rgb_jls_lossy_line.dcm": BARS,
                "SC_rgb_jpeg_lossy_gdcm.dcm": BARS, "SC_rgb_rle_32bit.dcm": BARS}
SELF_CASES = [pytest.param(paths, id=_ident(paths[0]),
                           marks=([pytest.mark.slow] if paths[0] in VOLUMES else [])
                           + ([pytest.mark.xfail(strict=False, reason=f"{KNOWN_MISSES[paths[0].name]} (measured, "
                                                                      "reported)")]
                              if paths[0].name in KNOWN_MISSES else []))
              for paths in READABLE.values()]


def test_corpus_is_the_installed_packages():
    # A corpus that shrank to nothing would pass every test below; pydicom >= 3 and nibabel >= 5 ship these.
    names = {p.name for p in CORPUS}
    assert {"SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm", "rtdose.dcm", "anatomical.nii",
            "example4d.nii.gz"} <= names
    assert len(CORPUS) > 150 and len(READABLE) > 40


@pytest.mark.parametrize("path", CORPUS, ids=_ident)
def test_check_reads_or_refuses_in_one_line(path, capsys):
    if path.is_dir():  # a DICOM series folder: given on the command line, its files would be walked too
        status, line = check_one(path, None)
        code, out, err = {"read": 0, "refused": 2}.get(status, 1), line + "\n", ""
    else:
        code = main(["check", str(path)])
        out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert "Traceback" not in err
    if code == 0:
        assert lines[0].startswith(f"read: {path}: a ")
    else:
        assert code == 2 and lines[0].startswith(f"refused: {path}: "), (code, out)


def test_corpus_in_one_process_never_crashes():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "medshot.cli", "check", *map(str, corpus_roots())],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr  # some files are refused (other formats, no pixel data)
    assert "Traceback" not in proc.stderr and "crashed" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == len(CORPUS) and all(line.startswith(("read: ", "refused: ")) for line in lines)
    read = sum(line.startswith("read: ") for line in lines)
    assert f"checked {len(lines)}: {read} read, {len(lines) - read} refused, 0 crashed" in proc.stderr


# ------------------------------------------------------------------------------------------------
# What multi-frame, colour and MONOCHROME1 files are read as
# ------------------------------------------------------------------------------------------------

MULTIFRAME_COLOUR = ["SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm",
                     "examples_ybr_color.dcm"]


def _pydicom_rgb(name: str) -> np.ndarray:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(str(pydicom_files() / name)).pixel_array  # (F, M, N, 3), YBR as RGB


@pytest.mark.parametrize("name", MULTIFRAME_COLOUR)
def test_multiframe_colour_is_one_frame_of_luminance_and_says_which(name, tmp_path, capsys):
    rgb = _pydicom_rgb(name).astype(np.float64)
    luminance = rgb @ [0.299, 0.587, 0.114]
    first = _read_quietly(pydicom_files() / name)
    assert first.ndim == 2 and first.meta["frames"]["count"] == len(rgb) and first.meta["frames"]["used"] == 0
    assert "frame 0 is used" in first.meta["frame_note"]
    np.testing.assert_allclose(first.array, luminance[0], rtol=1e-5, atol=1e-3)
    last = _read_quietly(pydicom_files() / name, frame=len(rgb) - 1)
    np.testing.assert_allclose(last.array, luminance[-1], rtol=1e-5, atol=1e-3)
    with pytest.raises(MedshotError, match="outside the file's"):
        _read_quietly(pydicom_files() / name, frame=len(rgb))
    # the command line: the frame chosen is stated, and the template remembers it
    out, table = tmp_path / "t.json", tmp_path / "landmarks.csv"
    table.write_text("name,x,y\na,40,50\n")
    args = ["template", str(pydicom_files() / name), "--landmarks", str(table), "--out", str(out)]
    assert main([*args, "--frame", str(len(rgb) - 1)]) == 0 and Template.load(out).frame == len(rgb) - 1
    code = main(args)
    assert code == 0 and "frame 0 is used" in capsys.readouterr().err and Template.load(out).frame == 0


def test_a_palette_colour_image_is_the_luminance_of_its_lookup_table():
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(str(pydicom_files() / "examples_palette.dcm"))
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(_read_quietly(pydicom_files() / "examples_palette.dcm").array, expected, rtol=1e-5)


def test_monochrome1_is_inverted():
    import pydicom

    path = pydicom_files() / "dicomdirtests" / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(str(path))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    top = 2.0 ** int(ds.BitsStored) - 1
    slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
    np.testing.assert_allclose(_read_quietly(path).array, (top - raw) * slope + intercept, rtol=1e-6)


def test_rt_dose_frames_are_a_volume_placed_by_the_grid_offsets():
    import pydicom

    path = pydicom_files() / "rtdose.dcm"
    ds = pydicom.dcmread(str(path))
    image = _read_quietly(path)
    assert image.ndim == 3 and image.source.shape == (10, 10, 15)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    offsets = np.array([float(v) for v in ds.GridFrameOffsetVector])
    spacing = [float(v) for v in ds.PixelSpacing]
    for row, col, k in [(0, 0, 0), (3, 7, 9), (9, 2, 14)]:
        lps = ipp + [col * spacing[1], row * spacing[0], offsets[k]]  # axial: rows along y, columns along x
        world = image.index_to_world(image.source_to_index(np.array([[row, col, k]])))[0]
        np.testing.assert_allclose(world, lps * [-1, -1, 1], atol=1e-6)  # RAS = LPS with x, y negated
    dose = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    np.testing.assert_allclose(image.to_source_array(image.array), np.moveaxis(dose, 0, -1), rtol=1e-6)
    one = _read_quietly(path, frame=9)  # one frame, as a plane where that frame lies
    assert one.ndim == 2
    np.testing.assert_allclose(one.index_to_world(np.array([[0, 0]]))[0], (ipp + [0, 0, offsets[9]]) * [-1, -1, 1])


def _enhanced(tmp_path: Path, order: list[int]) -> tuple[Path, np.ndarray]:
    """An Enhanced MR multi-frame file whose frames are slices (per-frame positions), stored in ``order``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 4000, (len(order), 12, 14)).astype(np.uint16)  # (slice, row, column)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, generate_uid(), "MR"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 12, 14, len(order)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.8, 0.7], 2.5
    orient.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: rows along -z, columns along +y
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        pos, item = Dataset(), Dataset()
        pos.ImagePositionPatient = [10.0 + 2.5 * k, -20.0, 30.0]  # the normal is +x
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = volume[order].tobytes()
    path = tmp_path / "enhanced.dcm"
    ds.save_as(str(path), enforce_file_format=True)
    return path, volume


def test_enhanced_multiframe_with_positions_is_a_volume_in_slice_order(tmp_path):
    path, volume = _enhanced(tmp_path, order=[2, 0, 3, 1, 4])  # frames stored out of order
    image = _read_quietly(path)
    assert image.ndim == 3 and image.meta["frames"]["used"] == "all"
    # Slices are stacked along the normal, row x column = (0, 1, 0) x (0, 0, -1) = -x, as a series folder
    # is: source slice s is the frame at x = 10 + 2.5 (4 - s).
    np.testing.assert_array_equal(image.to_source_array(image.array), np.moveaxis(volume[::-1], 0, -1))
    for row, col, s in [(0, 0, 0), (5, 9, 3)]:
        lps = np.array([10.0 + 2.5 * (4 - s), -20.0 + 0.7 * col, 30.0 - 0.8 * row])
        world = image.index_to_world(image.source_to_index(np.array([[row, col, s]])))[0]
        np.testing.assert_allclose(world, lps * [-1, -1, 1], atol=1e-6)
    one = _read_quietly(path, frame=0)  # one frame on request: the first stored, which is slice k = 2
    assert one.ndim == 2 and one.meta["frames"]["used"] == 0
    np.testing.assert_array_equal(one.array, volume[2])


def test_a_4d_nifti_is_one_volume_of_its_time_series():
    path = nibabel_files() / "functional.nii"
    data = np.asarray(nib.load(str(path)).dataobj, np.float32)
    first = _read_quietly(path)
    assert first.meta["frames"]["count"] == data.shape[3] and "volume 0 is used" in first.meta["frame_note"]
    np.testing.assert_allclose(first.to_source_array(first.array), data[..., 0])
    seventh = _read_quietly(path, frame=7)
    np.testing.assert_allclose(seventh.to_source_array(seventh.array), data[..., 7])
    np.testing.assert_array_equal(seventh.affine, first.affine)


# ------------------------------------------------------------------------------------------------
# Every file read is a template that finds itself
# ------------------------------------------------------------------------------------------------


def _self_template(path: Path, folder: Path) -> tuple[Template, np.ndarray]:
    """A template from the file: a landmark at its most structured spot and one at its centre, and a box
    label map around the spot, written as a user would (mask file and landmark table)."""
    image = _read_quietly(path)
    spot = structured_spot(image.array)
    mask = box_mask(image.shape, spot)
    points = np.array([spot, centre(image.shape)], np.float64)
    table = folder / "landmarks.csv"
    if image.ndim == 2:
        mask_path = folder / "mask.png"
        save_png(mask_path, mask)
        table.write_text("name,x,y\n" + "".join(f"{n},{p[1]},{p[0]}\n" for n, p in zip(("spot", "centre"), points)))
    else:
        mask_path = folder / "mask.nii.gz"
        nib.save(nib.Nifti1Image(image.to_source_array(mask), image.source.affine), str(mask_path))
        src = image.index_to_source(points)
        rows = "".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(("spot", "centre"), src))
        table.write_text("name,i,j,k\n" + rows)
    template = Template.build(path, mask_path, table)
    return template, mask


@pytest.mark.parametrize("paths", SELF_CASES)
def test_a_file_read_is_a_template_that_finds_itself(paths, tmp_path):
    from medshot.pipeline import OneShot

    template, mask = _self_template(paths[0], tmp_path)
    np.testing.assert_allclose(template.landmark_points[1], centre(template.image.shape), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = OneShot(template).run(paths[0])
    distance = np.linalg.norm(result.landmark_points - template.landmark_points, axis=1)
    label = result.label_map == 1
    dice = 2 * np.sum(label & (mask == 1)) / (label.sum() + (mask == 1).sum())
    assert distance.max() <= SELF_DISTANCE and dice >= SELF_DICE, (
        f"{_ident(paths[0])} {template.image.shape}: landmark distances {np.round(distance, 2).tolist()} px "
        f"(spot, centre), Dice {dice:.4f}")


def test_a_multiframe_dicom_volume_is_a_volume_target(tmp_path):
    import shutil

    from medshot.data.read import is_volume_path
    from medshot.data.targets import list_targets

    for name in ("rtdose.dcm", "rtdose_1frame.dcm", "examples_ybr_color.dcm"):
        shutil.copy(pydicom_files() / name, tmp_path / name)
    assert list_targets([tmp_path], volumes=True) == [tmp_path / "rtdose.dcm"]
    assert [is_volume_path(tmp_path / n) for n in ("rtdose.dcm", "rtdose_1frame.dcm", "examples_ybr_color.dcm")] \
        == [True, False, False]
    assert is_volume_path(nibabel_files() / "functional.nii")  # a 4D time series: its volume 0
