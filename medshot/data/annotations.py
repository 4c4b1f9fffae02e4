"""Annotation files: landmark lists (CSV, 3D Slicer markups) and label-name tables.

Landmark CSVs say their coordinate system in the header:

* 2D images: ``name,x,y`` (or ``landmark_id,x,y``), pixels with x = column, y = row;
* volumes: ``name,i,j,k`` (voxel indices of the file's own array), ``name,x_mm,y_mm,z_mm``
  (world RAS mm; also ``x_ras,...``) or ``name,x_lps,y_lps,z_lps`` (DICOM patient coordinates).

An ``image`` (or ``id``/``target``) column selects the rows of one image when the file covers
several. Every reader returns :class:`Landmark` points as array indices of the image they belong to
(see :mod:`medshot.data.image`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .image import Image, path_stem
from .markups import is_markups_path, points_on, read_markups

_NAME_COLUMNS = ("name", "landmark", "landmark_id", "structure")
_IMAGE_COLUMNS = ("image", "id", "target")
_SYSTEMS_3D = {
    "voxel": ("i", "j", "k"),
    "ras": ("x_mm", "y_mm", "z_mm"),
    "ras2": ("x_ras", "y_ras", "z_ras"),
    "lps": ("x_lps", "y_lps", "z_lps"),
}


@dataclass
class Landmark:
    """A named point: array indices ``(ndim,)`` of the image it belongs to."""

    name: str
    point: np.ndarray


def read_landmarks(path: str | Path, image: Image, image_name: str | None = None) -> list[Landmark]:
    """Landmarks of ``image`` from a CSV (see the module docstring) or a 3D Slicer markups file."""
    path = Path(path)
    if is_markups_path(path):
        points = read_markups(path)
        names = [p.name for p in points]
        at = points_on(image, np.array([p.ras for p in points]), names, path)
        return [Landmark(n, p) for n, p in zip(names, at)]
    rows, cols = _read_rows(path)
    name_col = next((cols[c] for c in _NAME_COLUMNS if c in cols), None)
    if image.ndim == 2:
        if name_col is None or "x" not in cols or "y" not in cols:
            raise MedshotError("landmark CSV needs columns name,x,y (or landmark_id,x,y)", path)
        rows = _rows_of(rows, cols, image_name, path)
        out = [Landmark(str(r[name_col]).strip(), np.array([_number(r, cols["y"], i, path),
                                                            _number(r, cols["x"], i, path)]))
               for i, r in enumerate(rows, start=2)]
    else:
        system = next((s for s, names in _SYSTEMS_3D.items() if all(n in cols for n in names)), None)
        if name_col is None or system is None:
            if name_col is not None and all(c in cols for c in ("x", "y", "z")):
                raise MedshotError("landmark CSV columns x,y,z are ambiguous for a volume: name them i,j,k (voxels) "
                                   "or x_mm,y_mm,z_mm (world RAS mm)", path)
            raise MedshotError("landmark CSV needs a name column and i,j,k (voxels) or x_mm,y_mm,z_mm (mm)", path)
        rows = _rows_of(rows, cols, image_name, path)
        columns = [cols[c] for c in _SYSTEMS_3D[system]]
        values = np.array([[_number(r, c, i, path) for c in columns] for i, r in enumerate(rows, start=2)])
        if system == "lps":
            values = values * np.array([-1.0, -1.0, 1.0])
        at = image.source_to_index(values) if system == "voxel" else image.world_to_index(values)
        out = [Landmark(str(r[name_col]).strip(), p) for r, p in zip(rows, at)]
    names = [lm.name for lm in out]
    if len(set(names)) != len(names):
        raise MedshotError("landmark names repeat (several images? add an 'image' column)", path)
    return out


def _read_rows(path: Path) -> tuple[list[dict], dict[str, str]]:
    if not path.exists():
        raise MedshotError("landmark file not found", path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedshotError(f"cannot read CSV ({exc})", path) from exc
    if not rows:
        raise MedshotError("landmark CSV has no rows", path)
    return rows, {c.strip().lower(): c for c in rows[0].keys() if c is not None}


def _rows_of(rows: list[dict], cols: dict[str, str], image_name: str | None, path: Path) -> list[dict]:
    image_col = next((cols[c] for c in _IMAGE_COLUMNS if c in cols), None)
    if image_col is None or image_name is None:
        return rows
    wanted = {image_name, path_stem(image_name)}
    selected = [r for r in rows if str(r[image_col]).strip() in wanted
                or path_stem(str(r[image_col]).strip()) in wanted]
    if not selected:
        raise MedshotError(f"no rows for image '{image_name}' in its '{image_col}' column", path)
    return selected


def _number(row: dict, column: str, line: int, path: Path) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError) as exc:
        raise MedshotError(f"line {line}: coordinates must be numbers", path) from exc


def read_label_names(path: str | Path) -> dict[int, str]:
    """A CSV with columns ``label,name`` as ``{label: name}``."""
    p = Path(path)
    if not p.exists():
        raise MedshotError("file not found", p)
    try:
        with open(p, newline="") as fh:
            return {int(r["label"]): r["name"] for r in csv.DictReader(fh)}
    except (KeyError, ValueError, TypeError) as exc:
        raise MedshotError("label names CSV needs integer 'label' and a 'name' column", p) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedshotError(f"cannot read CSV ({exc})", p) from exc
