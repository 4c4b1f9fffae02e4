"""``medshot check PATH ...``: how medshot reads each file, or why it refuses it, one line per file.

A folder is walked (sub-folders included): every file that is an image medshot reads, looks like
DICOM, or is a medical format it names when refusing, gets a line, and a folder that is a DICOM
series gets one more line for the volume it is. Files given by name always get a line. Lines go
to standard output and start with what happened:

* ``read: PATH: a 2D image 320x240 pixels (W x H), 1x1 mm, US, colour YBR_FULL_422 as luminance; 30
  frames (a time series); frame 0 is used ...``
* ``refused: PATH: the one-line reason`` (what ``medshot template``/``localize``/``segment`` would stop on)

The exit status is 0 when every path was read, 2 when at least one was refused (as for any bad
input), 1 when reading failed in a way medshot does not foresee (a ``crashed:`` line: a bug).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import MedshotError, one_line

EXIT_REFUSED = 2
EXIT_CRASHED = 1


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="say how each image file is read (shape, spacing, frames) or why it is refused")
    p.add_argument("paths", nargs="+", help="image files, DICOM series folders, or folders to walk")
    p.add_argument("--frame", type=int, default=None,
                   help="frame (0-based) of a multi-frame DICOM or a 4D NIfTI to read (default: a volume when "
                        "the frames are evenly spaced slices, else frame 0)")


def candidates(paths: list[str]) -> list[Path]:
    """The files and DICOM series folders to check, in order (see the module docstring)."""
    from ..data.dicom import is_dicom_series_dir, looks_like_dicom
    from ..data.read import IMAGE_SUFFIXES, OTHER_FORMATS, suffix

    def wanted(f: Path) -> bool:
        return suffix(f) in IMAGE_SUFFIXES or suffix(f) in OTHER_FORMATS or looks_like_dicom(f)

    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        for folder in [p, *sorted(q for q in p.rglob("*") if q.is_dir())]:
            if is_dicom_series_dir(folder):
                out.append(folder)
            out.extend(f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".") and wanted(f))
    return out


def describe(image) -> str:
    """What an image was read as, in one line (no path)."""
    meta = image.meta
    if image.ndim == 3:
        shape = image.source.shape if image.source is not None else image.shape
        what = f"a volume {'x'.join(map(str, shape))} voxels (file order)"
    else:
        what = f"a 2D image {image.shape[1]}x{image.shape[0]} pixels (W x H)"
    spacing = "x".join(f"{s:.3g}" for s in image.spacing)
    parts = [what, f"{spacing} mm{'' if _placed(image) else ' (no pixel spacing in the file: 1 mm assumed)'}"]
    if meta.get("modality"):
        parts.append(str(meta["modality"]))
    colour = meta.get("photometric") or meta.get("mode") or ""
    if colour.startswith(("RGB", "YBR", "PALETTE")) or colour in ("P", "LA", "CMYK", "YCbCr", "RGBA"):
        parts.append(f"colour {colour} as luminance")
    elif colour == "MONOCHROME1":
        parts.append("MONOCHROME1 inverted to MONOCHROME2")
    frames = meta.get("frames")
    if frames and frames.get("used") == "all":
        parts.append(f"its {frames['count']} frames are the slices")
    if meta.get("files"):
        parts.append(f"{len(meta['files'])} files")
    line = ", ".join(parts)
    for note in (meta.get("frame_note"), _missing(meta)):
        if note:
            line += f"; {note}"
    return line


def _placed(image) -> bool:
    return image.kind != "raster" and (image.ndim == 3 or "spacing" in image.meta or image.kind == "nifti")


def _missing(meta: dict) -> str | None:
    from ..data.read import missing_note

    return missing_note(meta)


def check_one(path: Path, frame: int | None) -> tuple[str, str]:
    """``(status, line)`` for one path: status ``read``, ``refused`` or ``crashed``."""
    from ..data.read import check_contrast, read_image

    try:
        image = read_image(path, frame=frame)
        check_contrast(image.array, path)
    except MedshotError as exc:
        where = "" if exc.path is None or exc.path == path else f"{exc.path}: "  # a file of a series folder
        return "refused", f"refused: {path}: {where}{one_line(exc.problem, 1000)}"
    except Exception as exc:  # noqa: BLE001 - reported as a bug, one line, and the other paths still checked
        return "crashed", f"crashed: {path}: {type(exc).__name__}: {one_line(str(exc), 600)}"
    return "read", f"read: {path}: {describe(image)}"


def cmd_check(args: argparse.Namespace) -> int:
    found = candidates(args.paths)
    if not found:
        raise MedshotError(f"no image file in {', '.join(args.paths)}")
    counts = {"read": 0, "refused": 0, "crashed": 0}
    for path in found:
        status, line = check_one(path, args.frame)
        counts[status] += 1
        print(line, flush=True)
    print(f"checked {len(found)}: {counts['read']} read, {counts['refused']} refused, {counts['crashed']} crashed",
          file=sys.stderr)
    return EXIT_CRASHED if counts["crashed"] else EXIT_REFUSED if counts["refused"] else 0


COMMANDS = {"check": cmd_check}
