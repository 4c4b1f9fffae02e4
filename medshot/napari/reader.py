"""The napari reader: every file medshot reads, as layers with medshot's geometry.

PNG/JPEG/TIFF/BMP, NIfTI (2D, or 3D as a volume), DICOM files and DICOM series folders open as an
image layer; a template JSON (2D or volume) opens as its image plus its label map, prompt points
and landmarks; a 3D Slicer markups file (``.mrk.json``, ``.fcsv``) opens as a Points layer in LPS
millimetres, which is where :mod:`.layers` puts volumes (napari world ``(z, y, x)`` = LPS) and
raster images (``(y, x)`` = LPS, see :mod:`medshot.data.markups`).

A DICOM SEG or RT Structure Set opens as a Labels layer (label names = segment labels / ROI
names) on the grid of the image it was drawn on, which the reader takes from (1) a DICOM series
folder or file read in the same call (``viewer.open([series, seg], stack=True)``, or
:func:`read` given both) that it references, else (2) an image layer of that series already
open in the current viewer (open the series, then the SEG), else (3) the image it references found near it
(:func:`medshot.data.dicom_labels.find_referenced_source`: a DICOM file beside it, a series folder
inside its folder or beside that folder), whose image layer is then added too. Neither SEG nor
RTSTRUCT carries a full image grid of its own (an RTSTRUCT holds only contours), so without its
image it is refused with one line saying so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .layers import Frame, LayerData, frame_for, frame_of, image_layer, mask_layer, role_of, template_layers

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
    from ..data.dicom_labels import dicom_label_kind

    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    structures = [p for p in paths if p.is_file() and dicom_label_kind(p) is not None]
    layers: list[LayerData] = []
    opened: dict[Path, Frame] = {}  # DICOM images opened in this call, which structures may lie on
    for p in paths:
        if p not in structures:
            layers.extend(read_one(p, opened))
    for p in structures:
        layers.extend(structure_layers(p, list(opened.values())))
    return layers


def read_one(path: Path, opened: dict | None = None) -> list[LayerData]:
    """One image, volume, template or markups file's layers; DICOM images' frames are noted in ``opened``."""
    from ..data.markups import is_markups_path
    from ..data.read import read_image

    if is_markups_path(path):
        return [markups_layer(path)]
    if path.name.lower().endswith(".json"):
        return read_template(path)
    frame = frame_for(read_image(path))
    if opened is not None and frame.source.kind == "dicom":
        opened[path] = frame
    return [image_layer(frame, _stem(path))]


def structure_layers(path: Path, frames: Sequence[Frame]) -> list[LayerData]:
    """A SEG or RTSTRUCT as a Labels layer on the image it references (module docstring: which image).

    The image is the first of ``frames``' images that the object references; else the one found
    near the file, whose image layer comes first in the result. The Labels layer shares the
    image layer's frame and has the role ``mask``, so the template panel takes it as that image's
    label map.
    """
    from ..data.dicom_labels import find_referenced_source, read_dicom_labels, references
    from ..data.dicom_out import dicom_sources
    from ..data.read import read_image

    instances, series = references(path)
    layers: list[LayerData] = []
    frame = None
    for candidate in [*frames, *_open_frames()]:
        sources = dicom_sources(candidate.source) or []
        if any(s.SOPInstanceUID in instances or s.SeriesInstanceUID in series for s in sources):
            frame = candidate
            break
    if frame is None:
        source = find_referenced_source(path)
        if source is None:
            raise MedshotError("found no DICOM image it was drawn on (a DICOM file beside it, or a series folder "
                               "in or beside its folder); open it together with that series", path)
        frame = frame_for(read_image(source))
        layers.append(image_layer(frame, _stem(source)))
    labels, names = read_dicom_labels(path, frame.source)
    layers.append(mask_layer(frame, labels, names, name=_stem(path), source=str(path)))
    return layers


def _open_frames() -> list[Frame]:
    """Frames of the DICOM image layers open in the current napari viewer (none outside napari)."""
    try:
        import napari
    except ImportError:
        return []
    viewer = napari.current_viewer()
    if viewer is None:
        return []
    frames = [frame_of(layer) for layer in viewer.layers if role_of(layer) == "image"]
    return [f for f in frames if f is not None and f.source.kind == "dicom"]


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
