"""Which paths are targets: files and folders expanded into images or volumes, minus medshot's own outputs.

The command line and the napari plugin list targets the same way: a folder holding a run record
(``medshot-run.json``) is an output folder and refused; in other folders, names like medshot's
outputs (``*_mask.png``, ``*_overlay.png``, ``*_mask.nii.gz`` ...) are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import MedshotError
from .dicom import dicom_file_is_volume, dicom_files, is_dicom_series_dir
from .read import DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, is_image_path, suffix

RUN_RECORD = "medshot-run.json"
# Names medshot gives its own outputs: never taken as targets when a folder is listed.
OUTPUT_NAME = re.compile(r".*_((mask|overlay|label\d+_overlay)\.(png|nii|nii\.gz)|(seg|rtstruct)\.dcm)$", re.IGNORECASE)


def is_output_folder(folder: Path) -> bool:
    """A folder medshot wrote a batch into (it holds a run record)."""
    return (folder / RUN_RECORD).is_file()


def is_output_name(path: Path) -> bool:
    return bool(OUTPUT_NAME.match(path.name))


def refuse_output_folder(folder: Path) -> None:
    if is_output_folder(folder):
        raise MedshotError(f"is a medshot output folder (it holds {RUN_RECORD}), not a folder of targets", folder)


def list_targets(paths: Sequence[str | Path], volumes: bool = False) -> list[Path]:
    """Files and folders -> the targets they hold, sorted per folder, leaving out medshot's own outputs.

    For a 2D template a folder holds image files; for a volume template, 3D NIfTI files and DICOM
    series sub-folders (and a DICOM series folder given as a target is one volume). A folder that
    holds a run record is refused as a whole; in other folders, names like medshot's outputs
    (``*_mask.png``, ``*_overlay.png``, ``*_mask.nii.gz`` ...) are skipped.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MedshotError("file not found", p)
        if not p.is_dir():
            out.append(p)
            continue
        refuse_output_folder(p)
        if volumes and is_dicom_series_dir(p):
            out.append(p)
            continue
        found = sorted(q for q in p.iterdir() if not is_output_name(q) and _holds_target(q, volumes))
        if not found:
            raise MedshotError(_nothing_found(p, volumes), p)
        out.extend(found)
    return out


def _holds_target(path: Path, volumes: bool) -> bool:
    if volumes:  # a multi-frame DICOM file whose frames are slices is a volume too
        return (path.is_file() and (suffix(path) in NIFTI_SUFFIXES or
                                    (suffix(path) in DICOM_SUFFIXES and dicom_file_is_volume(path)))) or \
            (path.is_dir() and is_dicom_series_dir(path))
    return is_image_path(path)


def _nothing_found(folder: Path, volumes: bool) -> str:
    if volumes:
        hint = " (a single DICOM file is not a series)" if dicom_files(folder) else ""
        return f"folder holds no volume (3D .nii/.nii.gz, DICOM series folder or multi-frame DICOM volume){hint}"
    what = f"folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
    return what + " other than medshot outputs" if any(folder.iterdir()) else what


def refuse_out_in_targets(out: str | Path, targets: Sequence[str | Path], files: Sequence[Path]) -> None:
    """``--out`` must not be, or lie inside, a target folder, nor be the folder of a target file."""
    out_r = Path(out).resolve()
    for t in map(Path, targets):
        tr = t.resolve()
        if t.is_dir() and (out_r == tr or tr in out_r.parents):
            raise MedshotError(f"--out {out} is inside the target folder {t}; outputs would mix with the "
                               f"inputs; choose another --out", out)
    for f in files:
        if f.is_file() and f.resolve().parent == out_r:
            raise MedshotError(f"--out {out} is the folder of the target {f}; outputs would mix with the inputs; "
                               f"choose another --out", out)
