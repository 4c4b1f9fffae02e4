"""Readers of DICOM SEG and RTSTRUCT that medshot did not write, for round-trip checks.

* SEG: dcmqi's ``segimage2itkimage`` (C++, the reference implementation of DICOM SEG <-> ITK
  images; ``pip install dcmqi``), one NIfTI per segment.
* RTSTRUCT: rt-utils' contour rasteriser (``cv2.fillPoly``; ``pip install rt-utils``). It only
  handles square images with square pixels correctly (it swaps rows and columns otherwise), so
  the checks use such series.

Each returns masks on the source series' grid in frame order ``(n_slices, rows, columns)``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def dcmqi_tool() -> str | None:
    """Path of ``segimage2itkimage`` (on PATH or beside this Python), or None."""
    beside = Path(sys.executable).parent / "segimage2itkimage"
    return str(beside) if beside.exists() else shutil.which("segimage2itkimage")


def read_seg_dcmqi(seg: Path, work: Path, source_affine: np.ndarray, shape: tuple) -> dict[str, np.ndarray]:
    """Segment label -> mask ``(n_slices, rows, cols)`` as dcmqi reads ``seg``, placed on the source grid.

    ``source_affine`` is the series' source index (row, column, slice) -> RAS affine and ``shape`` the
    frames' shape ``(n_slices, rows, cols)``: dcmqi's images
    (ITK order: column, row, slice) are placed by their own affine, so any geometry error shows up.
    """
    import nibabel as nib

    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([dcmqi_tool(), "--inputDICOM", str(seg), "--outputDirectory", str(work), "--outputType", "nifti"],
                   check=True, capture_output=True)
    meta = json.loads((work / "meta.json").read_text())
    out = {}
    for i, group in enumerate(meta["segmentAttributes"], start=1):
        img = nib.load(work / f"{i}.nii.gz")
        data = np.asarray(img.dataobj)
        # dcmqi index -> source index; must be a permutation of (col, row, slice) plus integer shifts
        T = np.linalg.inv(source_affine) @ img.affine
        idx = np.argwhere(data > 0)
        src = np.rint(idx @ T[:3, :3].T + T[:3, 3]).astype(int)
        assert np.allclose(idx @ T[:3, :3].T + T[:3, 3], src, atol=1e-3), "dcmqi grid is not the series grid"
        for attrs in group:
            mask = np.zeros(shape, bool)
            mask[src[:, 2], src[:, 0], src[:, 1]] = data[tuple(idx.T)] == int(attrs["labelID"])
            out[attrs["SegmentLabel"]] = mask
    return out


def read_rtstruct_rtutils(series: Path, rtstruct: Path) -> dict[str, np.ndarray]:
    """ROI name -> mask ``(n_slices, rows, cols)`` as rt-utils rasterises ``rtstruct`` over ``series``."""
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_from(str(series), str(rtstruct))
    return {name: np.moveaxis(rt.get_roi_mask_by_name(name), 2, 0) for name in rt.get_roi_names()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def read_rtstruct_dicompyler(rtstruct: Path, sources: list) -> dict[str, np.ndarray] | None:
    """ROI name -> mask ``(n_slices, rows, cols)``: dicompyler-core's contour reader, filled as its DVH
    calculation fills them (matplotlib ``Path.contains_points`` at pixel centres, even-odd per plane).

    dicompyler-core keys contour planes by z, so this is for axial series only; None when it is absent.
    dicompyler-core 0.5.6 imports ``pydicom.dicomio.read_file``, gone in pydicom 3: given it here.
    """
    import pydicom
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread
    try:
        from dicompylercore import dicomparser
    except ImportError:
        return None
    from matplotlib.path import Path as MplPath

    parser = dicomparser.DicomParser(str(rtstruct))
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    iop = np.array([float(v) for v in sources[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in sources[0].PixelSpacing)
    z = np.array([float(s.ImagePositionPatient[2]) for s in sources])
    centres = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    out = {}
    for number, roi in parser.GetStructures().items():
        mask = np.zeros((len(sources), rows, cols), bool)
        for plane in parser.GetStructureCoordinates(number).values():
            for contour in plane:
                pts = np.array(contour["data"], float)
                k = int(np.argmin(np.abs(z - pts[0, 2])))
                d = pts - np.array([float(v) for v in sources[k].ImagePositionPatient])
                rc = np.stack([d @ iop[3:] / dr, d @ iop[:3] / dc], 1)  # (row, col) of each vertex
                mask[k] ^= MplPath(rc).contains_points(centres).reshape(rows, cols)
        out[roi["name"]] = mask
    return out
