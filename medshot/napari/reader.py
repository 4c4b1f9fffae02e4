"""The napari reader: every file medshot reads, as layers with medshot's geometry.

PNG/JPEG/TIFF/BMP, NIfTI (2D, or 3D as a volume), DICOM files and DICOM series folders open as an
image layer; a template JSON (2D or volume) opens as its image plus its label map, prompt points
and landmarks; a 3D Slicer markups file (``.mrk.json``, ``.fcsv``) opens as a Points layer in LPS
millimetres, which is where :mod:`.layers` puts volumes (napari world ``(z, y, x)`` = LPS) and
raster images (``(y, x)`` = LPS, see :mod:`medshot.data.markups`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .layers import LayerData, frame_for, image_layer, template_layers

PathOrPaths = str | Sequence[str]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """napari's reader hook: :func:`read` when medshot reads every given path, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(can_read(p) for p in paths):
        return None
    return read


def can_read(path: str | Path) -> bool:
    """Whether medshot reads this path (decided from names and headers, without reading pixels)."""
    from ..data.dicom import is_dicom_series_dir, looks_like_dicom
    from ..data.markups import is_markups_path
    from ..data.read import IMAGE_SUFFIXES

    p = Path(path)
    if p.is_dir():
        return is_dicom_series_dir(p)
    if not p.is_file():
        return False
    name = p.name.lower()
    if is_markups_path(p):
        return True
    if name.endswith(".json"):
        return _is_template_json(p)
    return name.endswith(IMAGE_SUFFIXES) or looks_like_dicom(p)


def _is_template_json(path: Path) -> bool:
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(spec, dict) and "image" in spec


def read(path: PathOrPaths) -> list[LayerData]:
    """Layer data tuples for one path or several (see the module docstring).

    Raises
    ------
    MedshotError
        A path medshot cannot read, with the reason.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    for p in map(Path, paths):
        layers.extend(read_one(p))
    return layers


def read_one(path: Path) -> list[LayerData]:
    from ..data.markups import is_markups_path
    from ..data.read import read_image

    if is_markups_path(path):
        return [markups_layer(path)]
    if path.name.lower().endswith(".json"):
        return read_template(path)
    return [image_layer(frame_for(read_image(path)), _stem(path))]


def read_template(path: str | Path) -> list[LayerData]:
    """A template JSON (2D or volume) as image, label map, prompt points and landmarks layers."""
    from ..data.template import Template

    return template_layers(Template.load(path), Path(path))


def markups_layer(path: str | Path) -> LayerData:
    """A Slicer markups file as a Points layer in LPS mm: ``(z, y, x)``, or ``(y, x)`` when every z is 0."""
    from ..data.markups import FLIP, read_markups

    points = read_markups(path)
    lps = np.array([p.ras for p in points]) * FLIP
    data = lps[:, ::-1]
    if np.allclose(data[:, 0], 0.0):
        data = data[:, 1:]
    kwargs = {"name": _stem(path), "features": {"name": [p.name for p in points]},
              "text": {"string": "{name}", "size": 10, "color": "cyan", "anchor": "upper_left"},
              "face_color": "cyan", "size": 4.0}
    return data, kwargs, "points"


def _stem(path: Path) -> str:
    from ..data.image import path_stem

    name = Path(path).name
    for suffix in (".mrk.json", ".fcsv", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path_stem(path)


def read_or_error(path: str | Path) -> list[LayerData]:
    """:func:`read` for one path that must be readable (``medshot annotate``): a one-line error otherwise."""
    if not can_read(path):
        p = Path(path)
        problem = ("file not found" if not p.exists()
                   else "not an image, volume, template JSON or markups file medshot reads")
        raise MedshotError(problem, p)
    return read(str(path))
