"""``medshot segment`` on a DICOM series writes a SEG and an RTSTRUCT; ``medshot template`` takes either as
its labels, with the same results as the equivalent NIfTI label map."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_readers import dcmqi_tool, read_seg_dcmqi

from medshot.cli import main
from medshot.data.read import read_image, read_label_map
from medshot.synthetic3d import Phantom3D, Warp3D, grid_affine, sample_phantom, write_dicom_series

pytest.importorskip("highdicom", reason="DICOM SEG writing needs the dicom extra (highdicom)")
WORK = ["--work-spacing", "2.0", "--quiet"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A template DICOM series with a NIfTI label map (labels 1, 2 named), a DICOM series target, a template JSON."""
    root = tmp_path_factory.mktemp("dcm")
    ph = Phantom3D(60.0, seed=1)
    t_shape, t_aff = (44, 44, 30), grid_affine((44, 44, 30), (1.5, 1.5, 2.0), axcodes="PRI")
    image, labels = sample_phantom(ph, t_shape, t_aff)
    write_dicom_series(image * 1000 - 1024, t_aff, root / "tseries", intercept=-1024.0)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), t_aff), root / "tlabels.nii.gz")
    (root / "names.csv").write_text("label,name\n1,upper organ\n2,lower organ\n")
    warp = Warp3D(np.eye(3) * 1.04, np.array([2.0, -3.0, 1.5]), 1.5, 50.0)
    d_shape, d_aff = (42, 42, 28), grid_affine((42, 42, 28), (1.5, 1.5, 2.2), (-2, 3, 0), axcodes="LSP")
    target, _ = sample_phantom(ph, d_shape, d_aff, warp)
    write_dicom_series(target * 1000 - 1024, d_aff, root / "target01", intercept=-1024.0)
    assert main(["template", str(root / "tseries"), "--mask", str(root / "tlabels.nii.gz"), "--label-names",
                 str(root / "names.csv"), "--out", str(root / "t.json")]) == 0
    return root


@pytest.fixture(scope="module")
def segmented(case):
    out = case / "out"
    assert main(["segment", "--template", str(case / "t.json"), "--out", str(out), str(case / "target01"),
                 *WORK]) == 0
    return out


def test_segment_writes_seg_and_rtstruct_that_match_the_nifti(case, segmented):
    from medshot.data.dicom_out import dicom_sources
    from medshot.data.rtstruct import rasterize

    seg_path, rt_path = segmented / "target01_seg.dcm", segmented / "target01_rtstruct.dcm"
    assert seg_path.exists() and rt_path.exists()
    mask = nib.load(segmented / "target01_mask.nii.gz")
    frames = np.moveaxis(np.asarray(mask.dataobj), 2, 0)  # source layout (rows, cols, slices) -> frames
    target = read_image(case / "target01")
    np.testing.assert_allclose(mask.affine, target.source.affine, atol=1e-5)
    seg = pydicom.dcmread(seg_path)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["upper organ", "lower organ"]
    rt = pydicom.dcmread(rt_path)
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["upper organ", "lower organ"]
    ours = rasterize(rt, dicom_sources(target))
    for value, name in ((1, "upper organ"), (2, "lower organ")):
        assert (frames == value).sum() > 50  # the phantom's organs were found at all
        np.testing.assert_array_equal(ours[name], frames == value)
    if dcmqi_tool() is None:
        pytest.skip("dcmqi (segimage2itkimage) is not installed: pip install dcmqi")
    by_dcmqi = read_seg_dcmqi(seg_path, segmented / "dcmqi", target.source.affine, frames.shape)
    for value, name in ((1, "upper organ"), (2, "lower organ")):
        np.testing.assert_array_equal(by_dcmqi[name], frames == value)


def test_no_dicom_out_and_non_dicom_targets_write_no_dicom(case, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", "--template", str(case / "t.json"), "--out", str(out), str(case / "target01"),
                 "--no-dicom-out", *WORK]) == 0
    assert (out / "target01_mask.nii.gz").exists() and not list(out.glob("*.dcm"))


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_template_from_seg_or_rtstruct_equals_template_from_nifti(case, segmented, kind, tmp_path):
    from medshot.data.dicom_out import Structure, dicom_outputs

    tseries = read_image(case / "tseries")
    labels, _ = read_label_map(case / "tlabels.nii.gz", tseries)
    files = dicom_outputs(tseries, labels, [Structure(1, "upper organ", (230, 159, 0)),
                                            Structure(2, "lower organ", (86, 180, 233))], "test")
    path = tmp_path / f"tseries_{kind}.dcm"
    path.write_bytes(files[path.name])
    np.testing.assert_array_equal(read_label_map(path, tseries)[0], labels)
    assert main(["template", str(case / "tseries"), "--mask", str(path), "--out", str(tmp_path / "t.json")]) == 0
    out = tmp_path / "out"
    assert main(["segment", "--template", str(tmp_path / "t.json"), "--out", str(out), str(case / "target01"),
                 *WORK]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "target01_mask.nii.gz").dataobj),
                                  np.asarray(nib.load(segmented / "target01_mask.nii.gz").dataobj))
    assert [d.SegmentLabel for d in pydicom.dcmread(out / "target01_seg.dcm").SegmentSequence] == \
        ["upper organ", "lower organ"]  # the names came from the DICOM file


def test_a_single_2d_dicom_file_target_gets_seg_and_rtstruct(template_files, phantom, tmp_path):
    """One single-frame file with patient geometry: its SEG and RTSTRUCT hold exactly the written mask."""
    from PIL import Image

    from medshot.data.dicom_labels import find_referenced_source, read_dicom_labels

    image, mask, _ = template_files
    (names := tmp_path / "names.csv").write_text("label,name\n1,disc\n2,ring\n")
    assert main(["template", str(image), "--mask", str(mask), "--label-names", str(names),
                 "--out", str(tmp_path / "t.json")]) == 0
    h, w = phantom.image.shape
    aff = grid_affine((h, w, 1), (0.7, 0.6, 3.0), (5, -8, 40), axcodes="PRI")  # rows posterior, columns right
    (target,) = write_dicom_series(phantom.image[:, :, None] * 1000.0, aff, tmp_path / "dcm")
    out = tmp_path / "out"
    assert main(["segment", "--template", str(tmp_path / "t.json"), "--out", str(out), str(target), "--quiet"]) == 0
    stem = target.stem
    written = np.asarray(Image.open(out / f"{stem}_mask.png"))
    assert written.shape == (h, w) and (written > 0).sum() > 100  # a real segmentation to carry
    source = pydicom.dcmread(target)
    like = read_image(target)
    for kind in ("seg", "rtstruct"):
        path = out / f"{stem}_{kind}.dcm"
        ds = pydicom.dcmread(path)
        assert (ds.FrameOfReferenceUID, ds.StudyInstanceUID) == (source.FrameOfReferenceUID, source.StudyInstanceUID)
        labels, label_names = read_dicom_labels(path, like)
        assert label_names == {1: "disc", 2: "ring"}
        # same pixels, same labels: SEG frames and the filled 0.5 iso-line contours give the mask back exactly
        np.testing.assert_array_equal(labels, written, err_msg=kind)
        assert find_referenced_source(path) == target  # as the napari reader finds the image (a sibling folder)
    seg = pydicom.dcmread(out / f"{stem}_seg.dcm")
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {source.SOPInstanceUID} and int(seg.NumberOfFrames) == 2  # one frame per segment
