"""How medshot's images, templates and results become napari layers and back (no Qt, no napari import).

Display conventions
-------------------
* A 2D image is shown as medshot works on it: its array ``(rows, cols)``, scaled by its pixel
  spacing in mm (DICOM PixelSpacing, the NIfTI affine; 1 for PNG/JPEG/TIFF). medshot's points
  ``(row, col)`` are napari's points as they are.
* A volume is shown in the radiological axial layout, whatever the file's own axis order: napari
  axes ``(S, P, L)`` (slices inferior to superior; rows anterior to posterior; columns from the
  patient's right to left), scaled by the voxel spacing and translated so that napari's world
  coordinates are DICOM patient (LPS) millimetres in ``(z, y, x)`` order. Oblique volumes are
  shown in their closest axis-aligned orientation, which is the (canonical) grid medshot matches
  on; medshot's own coordinates (indices of that grid, source voxels, RAS mm) stay exact because
  every conversion goes through the volume's affine.

Every layer made here carries ``metadata["medshot"]``: its ``role`` and the :class:`Frame` that
maps its data back to medshot's coordinates; writers and panels rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.geometry import from_radiological, radiological
from ..data.image import Image
from ..data.markups import FLIP

LayerData = tuple[Any, dict, str]
KEY = "medshot"
POSITIVE_COLOR, NEGATIVE_COLOR = "lime", "red"


@dataclass
class Frame:
    """Where one medshot image sits in napari.

    Attributes
    ----------
    source : Image
        The image (2D, or a volume); its geometry converts points and label maps.
    scale, translate : tuple of float
        napari layer scale and translate (mm), one per display axis.
    info : dict
        Anything else a panel or writer needs (template JSON path, window, label values).
    """

    source: Image = field(repr=False)
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    info: dict = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.source.ndim == 3

    @property
    def ndim(self) -> int:
        return self.source.ndim

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
        """An image or label map on the image's grid -> napari's layout.

        2D: ``(H, W)`` unchanged. Volume: the canonical ``(X, Y, Z)`` (RAS) array -> ``(Z, Y, X)``
        with Y and X reversed (``S, P, L``).
        """
        if not self.is_volume:
            return np.asarray(array)
        return np.ascontiguousarray(radiological(array))

    def from_display(self, data: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_display` (a volume comes back as the canonical RAS array)."""
        data = np.asarray(data)
        if data.shape != self.display_shape:
            raise ValueError(f"layer data is {data.shape}, the image is {self.display_shape}")
        if not self.is_volume:
            return data
        return np.ascontiguousarray(from_radiological(data))

    # -- points ------------------------------------------------------------------------------

    def points_to_display(self, points: np.ndarray) -> np.ndarray:
        """medshot points (array indices of the image, ``(N, ndim)``) -> napari data coordinates.

        2D: ``(row, col)`` unchanged. Volume: canonical ``(i, j, k)`` -> display indices.
        """
        p = np.asarray(points, float).reshape(-1, self.ndim)
        if not self.is_volume:
            return p.copy()
        X, Y, _ = self.source.shape
        return np.column_stack([p[:, 2], Y - 1 - p[:, 1], X - 1 - p[:, 0]])

    def points_from_display(self, data: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`points_to_display`: napari data coordinates -> array indices ``(N, ndim)``."""
        d = np.asarray(data, float).reshape(-1, self.ndim)
        if not self.is_volume:
            return d.copy()
        X, Y, _ = self.source.shape
        return np.column_stack([X - 1 - d[:, 2], Y - 1 - d[:, 1], d[:, 0]])

    def ras(self, data: np.ndarray) -> np.ndarray:
        """napari data coordinates ``(N, ndim)`` -> RAS millimetres ``(N, 3)`` (exact, through the affine)."""
        return self.source.index_to_world(self.points_from_display(data))


def frame_for(image: Image, **info) -> Frame:
    """The :class:`Frame` of a medshot image (see the module docstring for the conventions)."""
    spacing = image.spacing
    if image.ndim == 3:
        X, Y, _ = image.shape
        corner = image.affine @ np.array([X - 1, Y - 1, 0, 1.0])  # display index (0, 0, 0)
        lps = corner[:3] * FLIP
        return Frame(image, tuple(float(s) for s in spacing[::-1]), (float(lps[2]), float(lps[1]), float(lps[0])),
                     dict(info))
    return Frame(image, (float(spacing[0]), float(spacing[1])), (0.0, 0.0), dict(info))


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
    """Named landmarks as a Points layer; ``points`` are array indices of the image (:meth:`Frame.points_to_display`).

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
    """Positive (green) and negative (red) prompt points, each with its label: ``(label, positive, point)``
    with ``point`` in array indices of the image."""
    prompts = prompts or []
    pts = frame.points_to_display(np.array([p[2] for p in prompts], float)) if prompts else np.zeros((0, frame.ndim))
    colors = [POSITIVE_COLOR if p[1] else NEGATIVE_COLOR for p in prompts] or POSITIVE_COLOR
    kwargs = {"name": name, "ndim": frame.ndim, "features": {"label": np.array([p[0] for p in prompts], dtype=int),
                                                     "positive": np.array([p[1] for p in prompts], dtype=bool)},
              "feature_defaults": {"label": 1, "positive": True},
              "text": {"string": "{label}", "size": 8, "color": "white", "anchor": "lower_right"},
              "face_color": colors, "border_color": "black", "symbol": "diamond", "size": 0.7 * point_size(frame),
              "metadata": _meta(frame, "prompts"), **frame.kwargs(), **_units(frame)}
    return pts, kwargs, "points"


def mask_layer(frame: Frame, labels: np.ndarray | None = None, label_names: dict[int, str] | None = None,
               name: str = "mask", role: str = "mask", **more) -> LayerData:
    """A label map on the image's grid (see :meth:`Frame.to_display`) as a Labels layer; empty when None."""
    data = np.zeros(frame.display_shape, np.int32) if labels is None else frame.to_display(labels).astype(np.int32)
    kwargs = {"name": name, "opacity": 0.45,
              "metadata": _meta(frame, role, label_names=dict(label_names or {}), **more),
              **frame.kwargs(), **_units(frame)}
    return data, kwargs, "labels"


def template_layers(template, json_path) -> list[LayerData]:
    """A loaded :class:`~medshot.data.template.Template` (2D or volume) as image, mask, prompts and landmarks layers.

    The image layer's frame records the JSON path, the window and the label names, so that the
    template panel saves the template back with them.
    """
    image = template.image
    frame = frame_for(image, template_json=str(json_path), window=template.window, labels=dict(template.labels),
                      label_values=template.label_values, slice_index=template.slice_index)
    layers = [image_layer(frame, image.stem, template.window)]
    if template.mask is not None:
        layers.append(mask_layer(frame, template.mask, template.labels))
    prompts = [(p.label, positive, point) for p in template.prompts
               for positive, points in ((True, p.positive), (False, p.negative)) for point in points]
    layers.append(prompts_layer(frame, prompts))
    layers.append(landmarks_layer(frame, [lm.name for lm in template.landmarks], template.landmark_points))
    return layers
