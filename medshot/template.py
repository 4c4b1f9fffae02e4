"""The annotated template: one image with landmarks, prompt points and optionally a label map.

On disk it is a JSON file (paths relative to the JSON)::

    {"image": "case01.png", "mask": "case01_mask.png", "labels": {"1": "left parotid"},
     "landmarks": [{"name": "sella", "x": 227.3, "y": 368.7}],
     "prompts": [{"label": 1, "positive": [[x, y], ...], "negative": [[x, y], ...]}]}

Coordinates are template pixels: x = column, y = row, origin at the top-left pixel centre.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .core.errors import MedshotError
from .io import Image2D, check_contrast, load_image, read_label_map, write_text_atomic


@dataclass
class Landmark:
    name: str
    x: float
    y: float


@dataclass
class PromptPoints:
    """Positive and negative ``(x, y)`` points for one label."""

    label: int
    positive: np.ndarray
    negative: np.ndarray


@dataclass
class Template:
    """A template image and its annotations (see the module docstring for the JSON format)."""

    image_path: Path
    mask_path: Path | None = None
    labels: dict[int, str] = field(default_factory=dict)
    landmarks: list[Landmark] = field(default_factory=list)
    prompts: list[PromptPoints] = field(default_factory=list)
    window: tuple[float, float] | None = None
    slice_index: int | None = None
    _image: Image2D | None = field(default=None, repr=False)
    _mask: np.ndarray | None = field(default=None, repr=False)
    _label_values: dict[int, int] = field(default_factory=dict, repr=False)

    # -- loading -----------------------------------------------------------------------------

    @property
    def image(self) -> Image2D:
        if self._image is None:
            self._image = load_image(self.image_path, self.slice_index)
        return self._image

    @property
    def mask(self) -> np.ndarray | None:
        if self.mask_path is None:
            return None
        if self._mask is None:
            self._mask, self._label_values = read_label_map(self.mask_path, self.image.shape, self.image)
        return self._mask

    @property
    def label_values(self) -> dict[int, int]:
        """Label -> the value the mask file holds for it where they differ (``{1: 255}`` for a 0/255 mask).

        Outputs are written with the file's values, so a 0/255 template mask gives 0/255 masks.
        """
        _ = self.mask
        return dict(self._label_values)

    @property
    def landmarks_xy(self) -> np.ndarray:
        return np.array([[lm.x, lm.y] for lm in self.landmarks], dtype=np.float64).reshape(-1, 2)

    @classmethod
    def load(cls, json_path: str | Path) -> Template:
        """Read and validate a template JSON file."""
        json_path = Path(json_path)
        spec = read_template_json(json_path)
        base = json_path.parent
        try:
            labels = {int(k): str(v) for k, v in (spec.get("labels") or {}).items()}
            landmarks = [Landmark(str(d["name"]), float(d["x"]), float(d["y"])) for d in spec.get("landmarks") or []]
            prompts = [
                PromptPoints(int(p["label"]), np.asarray(p.get("positive") or [], float).reshape(-1, 2),
                             np.asarray(p.get("negative") or [], float).reshape(-1, 2))
                for p in spec.get("prompts") or []
            ]
            window = tuple(float(v) for v in spec["window"]) if spec.get("window") else None
        except (KeyError, TypeError, ValueError) as exc:
            raise MedshotError(f"malformed template entry ({type(exc).__name__}: {exc})", json_path) from exc
        template = cls(
            image_path=(base / spec["image"]),
            mask_path=(base / spec["mask"]) if spec.get("mask") else None,
            labels=labels, landmarks=landmarks, prompts=prompts, window=window,  # type: ignore[arg-type]
            slice_index=spec.get("slice_index"),
        )
        template.validate()
        return template

    def validate(self) -> None:
        """Check that the image loads and every annotation fits it; raise a one-line error if not."""
        image = self.image
        check_contrast(image.array, self.image_path)
        H, W = image.shape
        where = self.image_path
        for lm in self.landmarks:
            if not (-0.5 <= lm.x <= W - 0.5 and -0.5 <= lm.y <= H - 0.5):
                raise MedshotError(f"landmark '{lm.name}' at (x={lm.x:g}, y={lm.y:g}) lies outside the "
                                   f"{W}x{H} image", where)
        for p in self.prompts:
            for pt in np.vstack([p.positive, p.negative]):
                if not (-0.5 <= pt[0] <= W - 0.5 and -0.5 <= pt[1] <= H - 0.5):
                    raise MedshotError(f"prompt point ({pt[0]:g}, {pt[1]:g}) of label {p.label} lies outside "
                                       f"the {W}x{H} image", where)
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
            raise MedshotError("template has no landmarks, prompts or mask: nothing to find", where)

    def save(self, json_path: str | Path) -> None:
        """Write the JSON (paths relative to it), atomically."""
        json_path = Path(json_path)
        base = json_path.parent.resolve()

        def rel(p: Path) -> str:
            return os.path.relpath(Path(p).resolve(), base)

        spec: dict = {"image": rel(self.image_path)}
        if self.mask_path is not None:
            spec["mask"] = rel(self.mask_path)
        if self.slice_index is not None:
            spec["slice_index"] = int(self.slice_index)
        if self.window is not None:
            spec["window"] = list(self.window)
        if self.labels:
            spec["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        if self.landmarks:
            spec["landmarks"] = [{"name": lm.name, "x": round(lm.x, 3), "y": round(lm.y, 3)} for lm in self.landmarks]
        if self.prompts:
            spec["prompts"] = [
                {"label": p.label, "positive": np.round(p.positive, 2).tolist(),
                 "negative": np.round(p.negative, 2).tolist()}
                for p in self.prompts
            ]
        write_text_atomic(json_path, json.dumps(spec, indent=1) + "\n")

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def build(cls, image_path: str | Path, mask_path: str | Path | None = None,
              landmarks_csv: str | Path | None = None, labels: list[int] | None = None,
              label_names: dict[int, str] | None = None, n_positive: int = 5, n_negative: int = 4,
              window: tuple[float, float] | None = None, slice_index: int | None = None) -> Template:
        """Make a template from an image, an optional label map and an optional landmark CSV.

        Prompt points are sampled from the mask: ``n_positive`` spread inside each label,
        ``n_negative`` just outside it.
        """
        template = cls(image_path=Path(image_path), mask_path=Path(mask_path) if mask_path else None,
                       window=window, slice_index=slice_index)
        image = template.image
        if landmarks_csv is not None and Path(landmarks_csv).name.lower().endswith((".mrk.json", ".fcsv")):
            from .markups import markups_landmarks_2d  # 3D Slicer markups; imported here: it imports this module

            template.landmarks = markups_landmarks_2d(landmarks_csv, image)
        elif landmarks_csv is not None:
            template.landmarks = read_landmarks_csv(landmarks_csv, image_name=Path(image_path).name)
        mask = template.mask
        if mask is not None:
            template.labels = choose_labels(mask, labels, label_names, mask_path)
            chosen = list(template.labels)
            template.prompts = [sample_prompts(mask == label, label, n_positive, n_negative) for label in chosen]
        elif labels:
            raise MedshotError("--labels needs --mask")
        del image
        template.validate()
        return template


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


def choose_labels(mask: np.ndarray, labels: list[int] | None, label_names: dict[int, str] | None,
                  mask_path: str | Path | None) -> dict[int, str]:
    """The labels to use (all non-zero ones by default) with their names; one-line errors otherwise."""
    present = sorted(set(np.unique(mask).tolist()) - {0})
    if not present:
        raise MedshotError("mask is empty (no label other than 0)", mask_path)
    chosen = present if labels is None else list(labels)
    for label in chosen:
        if label not in present:
            raise MedshotError(f"label {label} is absent from the mask (present: "
                               f"{', '.join(map(str, present))})", mask_path)
    names = label_names or {}
    return {label: names.get(label, f"label {label}") for label in chosen}


def sample_prompts(region: np.ndarray, label: int, n_positive: int = 5, n_negative: int = 4,
                   seed: int = 0) -> PromptPoints:
    """Spread positive points inside ``region`` and negative points in a ring just outside it.

    Positives are chosen by farthest-point sampling among the region's deeper half (by distance to
    its edge), starting at its deepest pixel; negatives likewise in a ring whose width scales with
    the region's size.
    """
    region = np.asarray(region, bool)
    dist = ndimage.distance_transform_edt(region)
    depth = dist[region]
    inner = region & (dist >= max(1.0, 0.5 * depth.max()))
    ys, xs = np.nonzero(inner)
    start = int(np.argmax(dist[ys, xs]))
    positive = _farthest_points(np.stack([xs, ys], 1).astype(float), n_positive, start)
    radius = np.sqrt(region.sum() / np.pi)
    gap, width = max(1.0, 0.1 * radius), max(2.0, 0.2 * radius)
    outside = ndimage.distance_transform_edt(~region)
    ring = (outside > gap) & (outside <= gap + width)
    ys, xs = np.nonzero(ring)
    negative = np.zeros((0, 2))
    if len(xs):
        rng = np.random.default_rng(seed)
        negative = _farthest_points(np.stack([xs, ys], 1).astype(float), n_negative, int(rng.integers(len(xs))))
    return PromptPoints(label, positive, negative)


def _farthest_points(points: np.ndarray, k: int, start: int) -> np.ndarray:
    if len(points) == 0 or k <= 0:
        return np.zeros((0, 2))
    chosen = [start]
    d = np.linalg.norm(points - points[start], axis=1)
    for _ in range(min(k, len(points)) - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return points[chosen]


def read_landmarks_csv(path: str | Path, image_name: str | None = None) -> list[Landmark]:
    """Landmarks from a CSV with columns ``name,x,y`` (or ``landmark_id,x,y``).

    A CSV that also has an ``image`` column may list several images; then only the rows of
    ``image_name`` are used.
    """
    path = Path(path)
    if not path.exists():
        raise MedshotError("landmark file not found", path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedshotError(f"cannot read CSV ({exc})", path) from exc
    if not rows:
        raise MedshotError("landmark CSV has no rows", path)
    cols = {c.strip().lower(): c for c in rows[0].keys() if c is not None}
    name_col = cols.get("name") or cols.get("landmark_id") or cols.get("landmark")
    if name_col is None or "x" not in cols or "y" not in cols:
        raise MedshotError("landmark CSV needs columns name,x,y (or landmark_id,x,y)", path)
    if "image" in cols and image_name is not None:
        wanted = {image_name, Path(image_name).stem}
        rows = [r for r in rows if r[cols["image"]] in wanted or Path(r[cols["image"]]).stem in wanted]
        if not rows:
            raise MedshotError(f"no rows for image '{image_name}' in its 'image' column", path)
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            out.append(Landmark(str(r[name_col]).strip(), float(r[cols["x"]]), float(r[cols["y"]])))
        except (TypeError, ValueError) as exc:
            raise MedshotError(f"line {i}: x and y must be numbers", path) from exc
    names = [lm.name for lm in out]
    if len(set(names)) != len(names):
        raise MedshotError("landmark names repeat (several images? add an 'image' column)", path)
    return out
