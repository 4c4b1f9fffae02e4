"""The annotated template: one image or volume with landmarks, prompt points and optionally a label map.

On disk it is a JSON file (paths relative to the JSON). For a 2D image::

    {"image": "case01.png", "mask": "case01_mask.png", "labels": {"1": "left parotid"},
     "landmarks": [{"name": "sella", "x": 227.3, "y": 368.7}],
     "prompts": [{"label": 1, "positive": [[x, y], ...], "negative": [[x, y], ...]}]}

with pixel coordinates x = column, y = row (origin at the centre of the first pixel); and for a
volume (``image``: a NIfTI file or a DICOM series folder)::

    {"kind": "volume", "image": "case01.nii.gz", "mask": "case01_labels.nii.gz",
     "labels": {"1": "brainstem"}, "window": [-160, 240],
     "landmarks": [{"name": "sella", "i": 61.0, "j": 40.5, "k": 22.0, "x": -3.1, "y": 12.0, "z": 40.2}],
     "prompts": [{"label": 1, "positive": [[i, j, k], ...], "negative": [...]}]}

with ``i, j, k`` voxel indices of the file's own array and ``x, y, z`` world RAS mm (either set is
enough; the voxel indices win when both are given). An optional ``"method"`` entry
(``{"backbone": "dinov2_vits14", "layer": 9, "segmenter": "classical"}``, written by ``medshot
select``) is what runs with this template use unless told otherwise. ``"frame": N`` says which frame
of a file with several (a cine DICOM, a 4D NIfTI) the template is (0-based; written whenever one
was chosen, by default or by ``--frame``). In memory, every point is array indices of
:attr:`Template.image` (see :mod:`medshot.data.image`), in 2D and 3D alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..core.intensity import check_window
from ..core.labels import choose_labels, sample_prompts
from .annotations import Landmark, read_landmarks
from .image import Image
from .read import check_contrast, read_image, read_label_map
from .write import write_text_atomic

VOLUME_KIND = "volume"


@dataclass
class PromptPoints:
    """Positive and negative points ``(N, ndim)`` (array indices) for one label."""

    label: int
    positive: np.ndarray
    negative: np.ndarray


@dataclass
class Template:
    """A template image or volume and its annotations (see the module docstring for the JSON format)."""

    image_path: Path
    mask_path: Path | None = None
    labels: dict[int, str] = field(default_factory=dict)
    landmarks: list[Landmark] = field(default_factory=list)
    prompts: list[PromptPoints] = field(default_factory=list)
    window: tuple[float, float] | None = None
    slice_index: int | None = None
    # Which frame of a file with several (a cine, a 4D NIfTI); None: the reader's default (stated on reading).
    frame: int | None = None
    # What ``medshot select`` chose on the user's templates (backbone, its options, segmenter); runs use
    # it unless told otherwise.
    method: dict = field(default_factory=dict)
    _image: Image | None = field(default=None, repr=False)
    _mask: np.ndarray | None = field(default=None, repr=False)
    _label_values: dict[int, int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_image(cls, image: Image, mask: np.ndarray | None = None, **annotations) -> Template:
        """A template around an image already in memory (``image_path`` is its path, if any).

        ``mask``, optional: its label map in memory (the image's shape, integer labels, 0 background).
        """
        template = cls(image_path=image.path or Path("image"), **annotations)
        template._image = image
        if mask is not None:
            if mask.shape != image.shape:
                raise MedshotError(f"mask shape {mask.shape} differs from the image's {image.shape}", image.path)
            template._mask = np.asarray(mask).astype(np.int32, copy=False)
        return template

    # -- loading -----------------------------------------------------------------------------

    @property
    def image(self) -> Image:
        if self._image is None:
            self._image = read_image(self.image_path, self.slice_index, frame=self.frame)
        return self._image

    @property
    def ndim(self) -> int:
        return self.image.ndim

    @property
    def mask(self) -> np.ndarray | None:
        """The label map on the image's grid, or None."""
        if self._mask is not None:
            return self._mask
        if self.mask_path is None:
            return None
        self._mask, self._label_values = read_label_map(self.mask_path, self.image)
        return self._mask

    @property
    def label_values(self) -> dict[int, int]:
        """Label -> the value the mask file holds for it where they differ (``{1: 255}`` for a 0/255 mask).

        Outputs are written with the file's values, so a 0/255 template mask gives 0/255 masks.
        """
        _ = self.mask
        return dict(self._label_values)

    @property
    def landmark_points(self) -> np.ndarray:
        """``(N, ndim)`` array indices of the landmarks."""
        return np.array([lm.point for lm in self.landmarks], np.float64).reshape(-1, self.ndim)

    @classmethod
    def load(cls, json_path: str | Path) -> Template:
        """Read and validate a template JSON file."""
        json_path = Path(json_path)
        spec = read_template_json(json_path)
        base = json_path.parent
        try:
            mask_path = (base / spec["mask"]) if spec.get("mask") else None
            template = cls(image_path=base / spec["image"], mask_path=mask_path,
                           labels={int(k): str(v) for k, v in (spec.get("labels") or {}).items()},
                           window=check_window(spec.get("window"), json_path),
                           slice_index=spec.get("slice_index"), frame=spec.get("frame"),
                           method=_method(spec.get("method")))
        except (KeyError, TypeError, ValueError) as exc:
            raise MedshotError(f"malformed template entry ({type(exc).__name__}: {exc})", json_path) from exc
        image = template.image
        try:
            template.landmarks = [Landmark(str(d["name"]), _point(d, image)) for d in spec.get("landmarks") or []]
            template.prompts = [PromptPoints(int(p["label"]), _points(p.get("positive"), image),
                                             _points(p.get("negative"), image)) for p in spec.get("prompts") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise MedshotError(f"malformed landmark or prompt entry ({type(exc).__name__}: {exc})", json_path) from exc
        template.validate()
        return template

    def validate(self) -> None:
        """Check that the image loads and every annotation fits it; raise a one-line error if not."""
        image = self.image
        check_contrast(image.array, self.image_path)
        self.window = check_window(self.window, self.image_path)
        shape = np.array(image.shape)
        size = "x".join(map(str, shape[::-1] if image.ndim == 2 else shape))
        for lm in self.landmarks:
            if np.any(lm.point < -0.5) or np.any(lm.point > shape - 0.5):
                raise MedshotError(f"landmark '{lm.name}' at {_describe(lm.point, image)} lies outside the {size} "
                                   f"{'image' if image.ndim == 2 else 'volume'}", self.image_path)
        for p in self.prompts:
            for pt in np.vstack([p.positive, p.negative]):
                if np.any(pt < -0.5) or np.any(pt > shape - 0.5):
                    raise MedshotError(f"prompt point {_describe(pt, image)} of label {p.label} lies outside the "
                                       f"{size} image", self.image_path)
        mask = self.mask
        if mask is not None:
            present = set(np.unique(mask).tolist()) - {0}
            if not present:
                raise MedshotError("mask is empty (no label other than 0)", self.mask_path)
            for label in self.labels:
                if label not in present:
                    raise MedshotError(f"label {label} ('{self.labels[label]}') is absent from the mask",
                                       self.mask_path)
        if not self.landmarks and not self.prompts and mask is None:
            raise MedshotError("template has no landmarks, prompts or mask: nothing to find", self.image_path)

    def save(self, json_path: str | Path) -> None:
        """Write the JSON (paths relative to it), atomically."""
        json_path = Path(json_path)
        base = json_path.parent.resolve()

        def rel(p: Path) -> str:
            return os.path.relpath(Path(p).resolve(), base)

        image = self.image
        spec: dict = {"kind": VOLUME_KIND} if image.ndim == 3 else {}
        spec["image"] = rel(self.image_path)
        if self.mask_path is not None:
            spec["mask"] = rel(self.mask_path)
        if self.slice_index is not None:
            spec["slice_index"] = int(self.slice_index)
        used = (image.meta.get("frames") or {}).get("used")
        if isinstance(used, int):  # the frame read, stated even when it was the default, so reloading reads it
            spec["frame"] = used
        if self.window is not None:
            spec["window"] = list(self.window)
        if self.labels:
            spec["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        if self.method:
            spec["method"] = dict(self.method)
        if self.landmarks:
            spec["landmarks"] = [{"name": lm.name, **_entry(lm.point, image)} for lm in self.landmarks]
        if self.prompts:
            spec["prompts"] = [{"label": p.label, "positive": _file_points(p.positive, image),
                                "negative": _file_points(p.negative, image)} for p in self.prompts]
        write_text_atomic(json_path, json.dumps(spec, indent=1) + "\n")

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def build(cls, image_path: str | Path, mask_path: str | Path | None = None,
              landmarks_file: str | Path | None = None, labels: list[int] | None = None,
              label_names: dict[int, str] | None = None, n_positive: int = 5, n_negative: int = 4,
              window: tuple[float, float] | None = None, slice_index: int | None = None,
              frame: int | None = None) -> Template:
        """Make a template from an image, an optional label map and an optional landmark file.

        Prompt points are sampled from the mask: ``n_positive`` spread inside each label,
        ``n_negative`` just outside it.
        """
        template = cls(image_path=Path(image_path), mask_path=Path(mask_path) if mask_path else None,
                       window=window, slice_index=slice_index, frame=frame)
        image = template.image
        if landmarks_file is not None:
            template.landmarks = read_landmarks(landmarks_file, image, image_name=Path(image_path).name)
        mask = template.mask
        if mask is not None and label_names is None:
            label_names = _dicom_label_names(mask_path, image)
        if mask is not None:
            template.labels = choose_labels(mask, labels, label_names, mask_path)
            template.prompts = [PromptPoints(label, *sample_prompts(mask == label, n_positive, n_negative))
                                for label in template.labels]
        elif labels:
            raise MedshotError("--labels needs --mask")
        template.validate()
        return template


def _dicom_label_names(mask_path, image: Image) -> dict[int, str] | None:
    """A DICOM SEG's segment labels or an RTSTRUCT's ROI names (None for other mask files)."""
    from .dicom_labels import dicom_label_kind, read_dicom_labels

    return read_dicom_labels(mask_path, image)[1] if dicom_label_kind(mask_path) else None


def read_template_json(json_path: Path) -> dict:
    """The template JSON as a dict with an ``image`` entry; one-line errors for anything else."""
    if not json_path.exists():
        raise MedshotError("template file not found", json_path)
    if json_path.is_dir():
        raise MedshotError("is a folder, expected a template JSON file", json_path)
    try:
        spec = json.loads(json_path.read_text())
    except OSError as exc:
        raise MedshotError(f"cannot read the template ({exc.strerror or exc})", json_path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedshotError(f"not valid JSON ({exc})", json_path) from exc
    if not isinstance(spec, dict) or "image" not in spec:
        raise MedshotError("template JSON needs an 'image' entry", json_path)
    return spec


METHOD_KEYS = ("backbone", "layer", "facet", "stride", "log_bin", "segmenter")


def _method(entry) -> dict:
    """The template's ``method`` entry: only the settings ``medshot select`` writes."""
    if entry is None:
        return {}
    if not isinstance(entry, dict) or set(entry) - set(METHOD_KEYS):
        raise ValueError(f"'method' takes only {', '.join(METHOD_KEYS)}")
    return dict(entry)


def is_volume_template(json_path: str | Path) -> bool:
    """Whether a template JSON describes a volume (``"kind": "volume"``); False for anything unreadable."""
    try:
        spec = json.loads(Path(json_path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(spec, dict) and spec.get("kind") == VOLUME_KIND


# -- the file's coordinates <-> array indices -----------------------------------------------------


def _point(entry: dict, image: Image) -> np.ndarray:
    if image.ndim == 2:
        return np.array([float(entry["y"]), float(entry["x"])])
    if all(k in entry for k in ("i", "j", "k")):
        return image.source_to_index([[float(entry[k]) for k in "ijk"]])[0]
    if all(k in entry for k in ("x", "y", "z")):
        return image.world_to_index([[float(entry[k]) for k in "xyz"]])[0]
    raise KeyError("i,j,k or x,y,z")


def _points(values, image: Image) -> np.ndarray:
    raw = np.asarray(values or [], float).reshape(-1, image.ndim)
    return raw[:, ::-1] if image.ndim == 2 else image.source_to_index(raw).reshape(-1, 3)


def _entry(point: np.ndarray, image: Image) -> dict:
    if image.ndim == 2:
        return {"x": round(float(point[1]), 3), "y": round(float(point[0]), 3)}
    ijk = image.index_to_source(point)[0]
    xyz = image.index_to_world(point)[0]
    return {**{k: round(float(v), 3) for k, v in zip("ijk", ijk)},
            **{k: round(float(v), 3) for k, v in zip("xyz", xyz)}}


def _file_points(points: np.ndarray, image: Image) -> list:
    pts = np.asarray(points, float).reshape(-1, image.ndim)
    return np.round(pts[:, ::-1] if image.ndim == 2 else image.index_to_source(pts), 2).tolist()


def _describe(point: np.ndarray, image: Image) -> str:
    if image.ndim == 2:
        return f"(x={point[1]:g}, y={point[0]:g})"
    i, j, k = image.index_to_source(point)[0]
    return f"voxel ({i:g}, {j:g}, {k:g})"
