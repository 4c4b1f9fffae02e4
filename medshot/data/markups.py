"""3D Slicer landmark files: read fiducials from ``.mrk.json`` and ``.fcsv``, write ``.mrk.json``.

Slicer stores points in a patient coordinate system in millimetres: markups JSON files say which
(``"coordinateSystem": "LPS"`` or ``"RAS"``; Slicer 5 writes LPS) and ``.fcsv`` files say it in a
``# CoordinateSystem =`` header (``LPS``/``1``, ``RAS``/``0``; files without it are RAS, as Slicer
wrote them before 4.11). medshot works in RAS millimetres (the NIfTI convention; see
:mod:`medshot.data.image`), so ``x_ras = -x_lps``, ``y_ras = -y_lps``, ``z_ras = z_lps``, and it
writes LPS, as Slicer does.

Where an image sits in patient space is its :class:`~medshot.data.image.Image` affine (a raster
image without geometry as ITK, and so Slicer, load it: ``LPS = (column, row, 0)`` in 1 mm pixels),
so points a user places on a PNG in Slicer read back as the same pixels.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .image import Image

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
          "markups-schema-v1.0.3.json#")
MARKUPS_SUFFIXES = (".mrk.json", ".fcsv")
# LPS <-> RAS: flip the first two axes (the matrix is its own inverse).
FLIP = np.array([-1.0, -1.0, 1.0])
# Columns of an .fcsv written before the "# columns =" header existed (Slicer 4.4 to 4.10).
_FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                 "associatedNodeID"]
_UNITS_MM = {"mm": 1.0, "um": 1e-3}


@dataclass
class MarkupPoint:
    """One control point: its label and its position in RAS millimetres, shape ``(3,)``."""

    name: str
    ras: np.ndarray


def is_markups_path(path: str | Path) -> bool:
    """Whether a file name is a Slicer markups file (``.mrk.json`` or ``.fcsv``)."""
    return Path(path).name.lower().endswith(MARKUPS_SUFFIXES)


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def read_markups(path: str | Path) -> list[MarkupPoint]:
    """The fiducial points of a ``.mrk.json`` or ``.fcsv`` file, in RAS millimetres.

    Only point lists (``"type": "Fiducial"``) are read; control points whose ``positionStatus``
    is ``undefined`` are skipped. Labels must be unique, since they name landmarks.

    Raises
    ------
    MedshotError
        Missing or unreadable file, no points, a coordinate system or unit medshot does not know,
        repeated labels.
    """
    path = Path(path)
    if not path.is_file():
        raise MedshotError("landmark file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MedshotError(f"cannot read markups file ({exc})", path) from exc
    points = _read_fcsv(text, path) if path.name.lower().endswith(".fcsv") else _read_mrk_json(text, path)
    if not points:
        raise MedshotError("markups file holds no defined fiducial point", path)
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MedshotError(f"point labels repeat ({', '.join(dup)}); each landmark needs its own name", path)
    return points


def _read_mrk_json(text: str, path: Path) -> list[MarkupPoint]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedshotError(f"not valid JSON ({exc})", path) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise MedshotError("not a Slicer markups file (no 'markups' list)", path)
    out: list[MarkupPoint] = []
    fiducials = [m for m in doc["markups"] if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not fiducials and doc["markups"]:
        kinds = ", ".join(sorted({str(m.get("type")) for m in doc["markups"] if isinstance(m, dict)}))
        raise MedshotError(f"markups file holds no point list (type Fiducial), only {kinds}", path)
    for markup in fiducials:
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise MedshotError(f"coordinateSystem '{system}' is not LPS or RAS", path)
        units = markup.get("coordinateUnits", "mm")
        unit = units[0] if isinstance(units, list) and units else units
        if unit not in _UNITS_MM:
            raise MedshotError(f"coordinateUnits {units!r} is not mm or um", path)
        for i, cp in enumerate(markup.get("controlPoints") or [], start=1):
            if not isinstance(cp, dict) or cp.get("positionStatus", "defined") == "undefined":
                continue
            try:
                pos = np.array([float(v) for v in cp["position"]], float)
            except (KeyError, TypeError, ValueError) as exc:
                raise MedshotError(f"control point {i} has no numeric 'position'", path) from exc
            if pos.shape != (3,) or not np.all(np.isfinite(pos)):
                raise MedshotError(f"control point {i} position must be 3 finite numbers", path)
            pos = pos * _UNITS_MM[unit]
            name = str(cp.get("label") or cp.get("id") or f"{markup.get('name') or 'F'}-{i}").strip()
            out.append(MarkupPoint(name, pos * FLIP if system == "LPS" else pos))
    return out


def _read_fcsv(text: str, path: Path) -> list[MarkupPoint]:
    system, columns = "RAS", list(_FCSV_COLUMNS)
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "coordinatesystem":
                system = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}.get(value.upper(), value)
                if system not in ("RAS", "LPS"):
                    raise MedshotError(f"CoordinateSystem '{value}' is not LPS or RAS", path)
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            rows.append(line)
    if not {"x", "y", "z"} <= set(columns):
        raise MedshotError("fcsv columns lack x, y, z", path)
    out = []
    for n, row in enumerate(csv.reader(io.StringIO("\n".join(rows))), start=1):
        rec = dict(zip(columns, row))
        try:
            pos = np.array([float(rec[c]) for c in ("x", "y", "z")])
        except (KeyError, ValueError) as exc:
            raise MedshotError(f"point {n}: x, y, z must be numbers", path) from exc
        name = (rec.get("label") or rec.get("id") or f"F-{n}").strip()
        out.append(MarkupPoint(name, pos * FLIP if system == "LPS" else pos))
    return out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def markups_text(names: list[str], ras: np.ndarray, descriptions: list[str] | None = None,
                 node_name: str = "medshot") -> str:
    """A Slicer markups JSON document (schema v1.0.3) with one point list, positions in LPS mm.

    Parameters
    ----------
    names : list of str
        Control point labels, one per point.
    ras : ndarray, shape (N, 3)
        Positions in RAS millimetres (written as LPS).
    descriptions : list of str, optional
        Per-point descriptions (medshot puts the confidence there).
    """
    ras = np.asarray(ras, float).reshape(-1, 3)
    descriptions = descriptions or [""] * len(names)
    points = [
        {"id": str(i), "label": str(name), "description": desc, "associatedNodeID": "",
         "position": [round(float(v), 4) for v in p * FLIP],
         "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
         "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}
        for i, (name, p, desc) in enumerate(zip(names, ras, descriptions), start=1)
    ]
    doc = {"@schema": SCHEMA, "markups": [{
        "type": "Fiducial", "name": node_name, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(points),
        "controlPoints": points, "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "selectedColor": [1.0, 0.5, 0.5],
                    "pointLabelsVisibility": True, "glyphType": "Sphere3D", "glyphScale": 1.0, "textScale": 3.0},
    }]}
    return json.dumps(doc, indent=4) + "\n"


def write_markups(path: str | Path, names: list[str], ras: np.ndarray, descriptions: list[str] | None = None) -> Path:
    """Write :func:`markups_text` to ``path`` atomically; returns the path."""
    from .write import write_text_atomic

    write_text_atomic(path, markups_text(names, ras, descriptions))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Points on images
# ------------------------------------------------------------------------------------------------


def points_on(image: Image, ras: np.ndarray, names: list[str] | None = None,
              where: str | Path | None = None) -> np.ndarray:
    """RAS millimetres ``(N, 3)`` -> array indices ``(N, ndim)`` of ``image``.

    Raises
    ------
    MedshotError
        On a 2D image, a point lies more than half a slice off its plane (named by ``names``, file ``where``).
    """
    ras = np.asarray(ras, float).reshape(-1, 3)
    if image.ndim == 3:
        return image.world_to_index(ras)
    full = np.linalg.solve(image.affine, np.column_stack([ras, np.ones(len(ras))]).T).T  # (row, col, n, 1)
    far = np.abs(full[:, 2]) > 0.5 + 1e-6
    if np.any(far):
        i = int(np.argmax(far))
        name = names[i] if names else f"point {i + 1}"
        raise MedshotError(f"landmark '{name}' lies {abs(full[i, 2]):.3g} slices off the image plane of "
                           f"{image.path or 'the image'}", where)
    return full[:, :2]


def markups_bytes(image: Image, names: list[str], points: np.ndarray, descriptions: list[str] | None = None) -> bytes:
    """``.mrk.json`` bytes for points ``(N, ndim)`` (array indices) found on ``image``."""
    return markups_text(names, image.index_to_world(points), descriptions).encode()
