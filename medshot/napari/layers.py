"""How medshot's images, templates and results become napari layers and back (no Qt, no napari import).

Display conventions
-------------------
* A 2D image is shown as medshot works on it: ``(rows, cols)`` of the file, scaled by its pixel
  spacing in mm (DICOM PixelSpacing, the NIfTI affine; 1 for PNG/JPEG/TIFF). Template landmarks
  ``(x, y)`` are napari points ``(y, x)``.
* A volume is shown in the radiological axial layout, whatever the file's own axis order: napari
  axes ``(S, P, L)`` (slices inferior to superior; rows anterior to posterior; columns from the
  patient's right to left), scaled by the voxel spacing and translated so that napari's world
  coordinates are DICOM patient (LPS) millimetres in ``(z, y, x)`` order. Oblique volumes are
  shown in their closest axis-aligned orientation, which is the grid medshot matches on; medshot's
  own coordinates (source voxels, RAS mm) stay exact because every conversion goes through the
  volume's affine.

Every layer made here carries ``metadata["medshot"]``: its ``role`` and the :class:`Frame` that
maps its data back to medshot's coordinates; writers and panels rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import Image2D
from ..markups import FLIP, pixel_matrix, pixel_to_ras
from ..volume.io3d import Volume

LayerData = tuple[Any, dict, str]
KEY = "medshot"
POSITIVE_COLOR, NEGATIVE_COLOR = "lime", "red"


@dataclass
class Frame:
    """Where one medshot image sits in napari.

    Attributes
    ----------
    source : Image2D or Volume
        The image; its geometry converts points and label maps.
    scale, translate : tuple of float
        napari layer scale and translate (mm), one per display axis.
    info : dict
        Anything else a panel or writer needs (template JSON path, window, label values).
    """

    source: Image2D | Volume = field(repr=False)
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    info: dict = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return isinstance(self.source, Volume)

    @property
    def ndim(self) -> int:
        return 3 if self.is_volume else 2

    @property
    def path(self):
        return self.source.path

    @property
    def display_shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape[::-1]) if self.is_volume else tuple(self.source.shape)

    def kwargs(self) -> dict:
        """Scale and translate for a napari layer in this frame."""
        return {"scale": self.scale, "translate": self.translate}

    # -- arrays ------------------------------------------------------------------------------

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """An image or label map in medshot's layout -> napari's.

        2D: ``(H, W)`` unchanged. Volume: the canonical ``(X, Y, Z)`` (RAS) array -> ``(Z, Y, X)``
        with Y and X reversed (``S, P, L``).
        """
        if not self.is_volume:
            return np.asarray(array)
        return np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)[:, ::-1, ::-1])

    def from_display(self, data: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_display` (a volume comes back as the canonical RAS array)."""
        data = np.asarray(data)
        if data.shape != self.display_shape:
            raise ValueError(f"layer data is {data.shape}, the image is {self.display_shape}")
        if not self.is_volume:
            return data
        return np.ascontiguousarray(data[:, ::-1, ::-1].transpose(2, 1, 0))

    # -- points ------------------------------------------------------------------------------

    def points_to_display(self, points: np.ndarray) -> np.ndarray:
        """medshot points -> napari data coordinates.

        2D: ``(N, 2)`` pixels ``(x, y)`` -> ``(y, x)``. Volume: ``(N, 3)`` source voxel indices
        ``(i, j, k)`` of the file's array -> display indices.
        """
        if not self.is_volume:
            return np.asarray(points, float).reshape(-1, 2)[:, ::-1].copy()
        canon = self.source.source_to_canonical(np.asarray(points, float).reshape(-1, 3))
        X, Y, _ = self.source.shape
        return np.column_stack([canon[:, 2], Y - 1 - canon[:, 1], X - 1 - canon[:, 0]])

    def points_from_display(self, data: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`points_to_display`."""
        if not self.is_volume:
            return np.asarray(data, float).reshape(-1, 2)[:, ::-1].copy()
        d = np.asarray(data, float).reshape(-1, 3)
        X, Y, _ = self.source.shape
        canon = np.column_stack([X - 1 - d[:, 2], Y - 1 - d[:, 1], d[:, 0]])
        return self.source.canonical_to_source(canon)

    def ras(self, data: np.ndarray) -> np.ndarray:
        """napari data coordinates ``(N, ndim)`` -> RAS millimetres ``(N, 3)`` (exact, through the affine)."""
        points = self.points_from_display(data)
        if self.is_volume:
            return self.source.source_to_world(points)
        return pixel_to_ras(self.source, points)


def frame_for(image: Image2D | Volume, **info) -> Frame:
    """The :class:`Frame` of a medshot image (see the module docstring for the conventions)."""
    if isinstance(image, Volume):
        X, Y, _ = image.shape
        corner = image.affine @ np.array([X - 1, Y - 1, 0, 1.0])  # display index (0, 0, 0)
        lps = corner[:3] * FLIP
        spacing = image.spacing
        return Frame(image, tuple(float(s) for s in spacing[::-1]), (float(lps[2]), float(lps[1]), float(lps[0])),
                     dict(info))
    m = pixel_matrix(image)
    sx, sy = float(np.linalg.norm(m[:3, 0])), float(np.linalg.norm(m[:3, 1]))
    return Frame(image, (sy, sx), (0.0, 0.0), dict(info))


def frame_of(layer_or_meta) -> Frame | None:
    """The :class:`Frame` a layer (or a writer's ``meta`` dict) carries, or None."""
    if isinstance(layer_or_meta, dict):
        meta = layer_or_meta.get("metadata")
    else:
        meta = getattr(layer_or_meta, "metadata", None)
    entry = (meta or {}).get(KEY) or {}
    return entry.get("frame")


def role_of(layer) -> str | None:
    return ((getattr(layer, "metadata", None) or {}).get(KEY) or {}).get("role")


def _meta(frame: Frame, role: str, **more) -> dict:
    return {KEY: {"role": role, "frame": frame, **more}}


def _units(frame: Frame) -> dict:
    # A raster image has no physical size; napari's default unit (pixel) is then the honest one.
    if frame.is_volume or frame.source.kind in ("nifti", "dicom"):
        return {"units": ("mm",) * frame.ndim}
    return {}


def point_size(frame: Frame) -> float:
    """A marker size (data pixels) that reads well on this image: 2.5 % of its longest side, at least 3."""
    return max(3.0, 0.025 * max(frame.display_shape))


# ------------------------------------------------------------------------------------------------
# Layer data tuples
# ------------------------------------------------------------------------------------------------


def image_layer(frame: Frame, name: str, window: tuple[float, float] | None = None, role: str = "image") -> LayerData:
    """The image, grey, with contrast limits from ``window`` or robust percentiles (0.5, 99.5)."""
    data = frame.to_display(frame.source.array)
    lo, hi = window if window is not None else np.percentile(data, (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max()) + 1e-6
    kwargs = {"name": name, "colormap": "gray", "contrast_limits": (float(lo), float(hi)),
              "metadata": _meta(frame, role), **frame.kwargs(), **_units(frame)}
    return data, kwargs, "image"


def landmarks_layer(frame: Frame, names: list[str], points: np.ndarray | None = None,
                    confidences: list[float] | None = None, name: str = "landmarks",
                    role: str = "landmarks") -> LayerData:
    """Named landmarks as a Points layer; ``points`` in medshot coordinates (see :meth:`Frame.points_to_display`).

    With ``confidences`` (results) each point is coloured by its confidence, red (0) to green (1).
    """
    pts = np.zeros((0, frame.ndim)) if points is None or len(names) == 0 else frame.points_to_display(points)
    # Typed columns: an empty list would make a float column that refuses the string default.
    features: dict = {"name": np.array([str(n) for n in names], dtype=object)}
    color: dict = {"face_color": "yellow"}
    if confidences is not None:
        features["confidence"] = np.array(confidences, dtype=float)
        color = {"face_color": "confidence", "face_colormap": "RdYlGn", "face_contrast_limits": (0.0, 1.0)}
    size = point_size(frame)
    kwargs = {"name": name, "ndim": frame.ndim, "features": features, "feature_defaults": {"name": ""},
              "text": {"string": "{name}", "size": 10, "color": "yellow", "anchor": "upper_left"},
              "size": size, "border_color": "black", "border_width": 0.1, "metadata": _meta(frame, role),
              **color, **frame.kwargs(), **_units(frame)}
    if confidences is not None:
        kwargs["feature_defaults"] = {"name": "", "confidence": 1.0}
    return pts, kwargs, "points"


def prompts_layer(frame: Frame, prompts: list[tuple[int, bool, np.ndarray]] | None = None,
                  name: str = "prompts") -> LayerData:
    """Positive (green) and negative (red) prompt points, each with its label; ``(label, positive, (x, y))``."""
    prompts = prompts or []
    pts = frame.points_to_display(np.array([p[2] for p in prompts], float)) if prompts else np.zeros((0, 2))
    colors = [POSITIVE_COLOR if p[1] else NEGATIVE_COLOR for p in prompts] or POSITIVE_COLOR
    kwargs = {"name": name, "ndim": 2, "features": {"label": np.array([p[0] for p in prompts], dtype=int),
                                                     "positive": np.array([p[1] for p in prompts], dtype=bool)},
              "feature_defaults": {"label": 1, "positive": True},
              "text": {"string": "{label}", "size": 8, "color": "white", "anchor": "lower_right"},
              "face_color": colors, "border_color": "black", "symbol": "diamond", "size": 0.7 * point_size(frame),
              "metadata": _meta(frame, "prompts"), **frame.kwargs(), **_units(frame)}
    return pts, kwargs, "points"


def mask_layer(frame: Frame, labels: np.ndarray | None = None, label_names: dict[int, str] | None = None,
               name: str = "mask", role: str = "mask", **more) -> LayerData:
    """A label map (medshot layout, see :meth:`Frame.to_display`) as a Labels layer; empty when None."""
    data = np.zeros(frame.display_shape, np.int32) if labels is None else frame.to_display(labels).astype(np.int32)
    kwargs = {"name": name, "opacity": 0.45,
              "metadata": _meta(frame, role, label_names=dict(label_names or {}), **more),
              **frame.kwargs(), **_units(frame)}
    return data, kwargs, "labels"


def template_layers(template, json_path) -> list[LayerData]:
    """A loaded template (2D :class:`~medshot.template.Template` or a volume template) as layers.

    The image layer's frame records the JSON path, the window and the label names, so that the
    template panel saves the template back with them.
    """
    is_volume = hasattr(template, "landmarks_ijk")
    image = template.image
    frame = frame_for(image, template_json=str(json_path), window=template.window, labels=dict(template.labels),
                      label_values=template.label_values, slice_index=getattr(template, "slice_index", None))
    stem = image.stem
    layers = [image_layer(frame, stem, template.window)]
    if template.mask is not None:
        layers.append(mask_layer(frame, template.mask, template.labels))
    names = [lm.name for lm in template.landmarks]
    points = template.landmarks_ijk if is_volume else template.landmarks_xy
    if not is_volume:
        prompts = [(p.label, positive, xy) for p in template.prompts
                   for positive, pts in ((True, p.positive), (False, p.negative)) for xy in pts]
        layers.append(prompts_layer(frame, prompts))
    layers.append(landmarks_layer(frame, names, points))
    return layers
