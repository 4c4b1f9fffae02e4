"""DICOM SEG and RTSTRUCT results read back by readers medshot did not write (dcmqi, rt-utils).

Label maps with known shapes go through :func:`medshot.data.dicom_out.dicom_outputs` on a synthetic
coronal series (non-axial, shuffled files) and on a CT series made from an OpenKBP volume with its
expert labels; ``medshot segment`` on a DICOM series writes both beside its NIfTI label map.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import evaldata_task
from dicom_readers import dcmqi_tool, dice, read_rtstruct_dicompyler, read_rtstruct_rtutils, read_seg_dcmqi

from medshot.data.read import read_image
from medshot.synthetic3d import grid_affine, write_dicom_series

highdicom = pytest.importorskip("highdicom", reason="DICOM SEG writing needs the dicom extra (highdicom)")


def _spheres(shape, centres, radii, values) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    out = np.zeros(shape, np.uint16)
    for c, r, v in zip(centres, radii, values):
        out[sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= r * r] = v
    return out


def _write(image, labels, structures, folder):
    from medshot.data.dicom_out import dicom_outputs

    files = dicom_outputs(image, labels, structures, "test")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name.rsplit("_", 1)[1]: folder / name for name in files}


def check_round_trip(image, labels, structures, out, series, axial: bool = False) -> dict[str, tuple]:
    """Write SEG + RTSTRUCT for ``labels`` on ``image``; read them back.

    Returns name -> (SEG exact, Dice of rt-utils' fill, Dice of dicompyler-core's fill or None). The
    bar (Dice >= 0.95) is on dicompyler-core's fill for axial series (interior at pixel centres, as
    planning systems fill), on rt-utils' otherwise (it fills boundary pixels too: coarse small
    structures come back inflated by up to a pixel ring).
    """
    from medshot.data.dicom_out import dicom_sources, source_frames
    from medshot.data.rtstruct import rasterize

    paths = _write(image, labels, structures, out)
    frames = source_frames(image, labels)
    seg = pydicom.dcmread(paths["seg.dcm"])
    sources = dicom_sources(image)
    # the SEG references every source instance it has a frame for, and is in the source's frame of reference
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {s.SOPInstanceUID for s in sources}
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [s.name for s in structures]
    rgb = [highdicom.color.CIELabColor.from_dicom_value(d.RecommendedDisplayCIELabValue).to_rgb()
           for d in seg.SegmentSequence]
    assert [tuple(c) for c in rgb] == [s.rgb for s in structures]
    results = {}
    if dcmqi_tool() is None:
        pytest.skip("dcmqi (segimage2itkimage) is not installed: pip install dcmqi")
    by_dcmqi = read_seg_dcmqi(paths["seg.dcm"], out / "dcmqi", image.source.affine, frames.shape)
    pytest.importorskip("rt_utils", reason="rt-utils reads the RTSTRUCT back: pip install rt-utils")
    by_rtutils = read_rtstruct_rtutils(series, paths["rtstruct.dcm"])
    by_dicompyler = read_rtstruct_dicompyler(paths["rtstruct.dcm"], sources) if axial else None
    if axial and by_dicompyler is None:
        pytest.skip("dicompyler-core reads the axial RTSTRUCT back: pip install dicompyler-core")
    ours = rasterize(pydicom.dcmread(paths["rtstruct.dcm"]), sources)
    rt = pydicom.dcmread(paths["rtstruct.dcm"])
    assert [r.ROIName for r in rt.StructureSetROISequence] == [s.name for s in structures]
    assert [list(map(int, c.ROIDisplayColor)) for c in rt.ROIContourSequence] == [list(s.rgb) for s in structures]
    for s in structures:
        truth = frames == s.value
        seg_exact = float(np.array_equal(by_dcmqi[s.name], truth))
        by_dp = None if by_dicompyler is None else dice(by_dicompyler[s.name], truth)
        results[s.name] = (seg_exact, dice(by_rtutils[s.name], truth), by_dp)
        assert seg_exact == 1.0, s.name
        assert (by_dp if axial else results[s.name][1]) >= 0.95, (s.name, results[s.name])
        np.testing.assert_array_equal(ours[s.name], truth)  # the 0.5 iso-line contours fill back exactly
    return results


def test_seg_and_rtstruct_of_a_coronal_series_read_back_exactly(tmp_path):
    from medshot.data.dicom_out import Structure

    shape = (64, 64, 16)  # rows run to the left, columns superior, slices posterior: a coronal series
    aff = grid_affine(shape, (0.9, 0.9, 2.5), (10, -20, 30), axcodes="RSP")
    write_dicom_series(np.indices(shape)[0] * 3.0 - 1000, aff, tmp_path / "series", shuffle_seed=3)
    image = read_image(tmp_path / "series")
    assert image.source.shape == shape and not np.allclose(image.source.affine, image.affine)
    c = np.array(image.shape) / 2
    labels = _spheres(image.shape, [c + [-10, 0, 0], c + [12, 4, 0]], [11.0, 14.0], [2, 7])
    structures = [Structure(2, "left blob", (230, 159, 0)), Structure(7, "right blob", (86, 180, 233))]
    check_round_trip(image, labels, structures, tmp_path, tmp_path / "series")


@pytest.mark.evaldata
@pytest.mark.parametrize("patient", ["pt_1", "pt_2"])
def test_seg_and_rtstruct_of_an_openkbp_ct_series(tmp_path, patient, capsys):
    """A real head-and-neck CT written as a DICOM series, its expert organ contours as SEG and RTSTRUCT."""
    import csv

    import nibabel as nib

    from medshot.data.dicom_out import Structure
    from medshot.data.read import read_label_map
    from medshot.viz import label_color

    task = evaldata_task("ct_headneck_oar_openkbp/volumes")
    nii = nib.load(task / "images" / f"{patient}.nii.gz")
    write_dicom_series(np.asarray(nii.dataobj, np.float32), nii.affine, tmp_path / "series", shuffle_seed=1)
    image = read_image(tmp_path / "series")
    labels, _ = read_label_map(task / "labels" / f"{patient}.nii.gz", image)
    with open(task.parent / "label_names.csv") as fh:
        names = {int(r["label"]): r["name"] for r in csv.DictReader(fh)}
    present = [int(v) for v in np.unique(labels) if v]
    structures = [Structure(v, names[v], tuple(int(c) for c in label_color(v))) for v in present]
    results = check_round_trip(image, labels, structures, tmp_path, tmp_path / "series", axial=True)
    with capsys.disabled():  # the numbers docs/dicom.md quotes
        print(f"\n{patient}: " + ", ".join(f"{n} SEG exact={int(e)} Dice rt-utils={d:.4f} dicompyler-core={p:.4f}"
                                            for n, (e, d, p) in results.items()))
