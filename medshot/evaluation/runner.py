"""Running medshot and the baselines on a dataset's cases: one runner for 2D images and volumes.

Array space: predictions and truth are compared in the *target file's own array* (2D
``(rows, columns)``; 3D source voxels ``(i, j, k)``, the NIfTI data array's axis order, not the
canonical one medshot matches on), so predicted label maps line up with the ground-truth files and
with the landmark CSVs as written. What differs by kind is only how cases.csv names coordinates and
units (:attr:`Runner.point_columns`, :attr:`Runner.element`) and how a prediction is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..core.intensity import normalize_intensity
from ..data.annotations import Landmark, read_landmarks
from ..data.image import Image, path_stem
from ..data.read import read_image, read_label_map
from ..data.template import Template
from ..data.write import label_map_bytes, png_bytes
from .baselines import BASELINES, baseline_status, run_baseline
from .cases import Case, Entry

KINDS = ("2d", "3d")


@dataclass
class Prediction:
    """One method's output on one target, in the target's array space.

    Attributes
    ----------
    label_map : ndarray of int, shape = target.shape, or None
    scores : dict of int to float
        Per-label score the method reports (may be empty).
    points : dict of str to ndarray (ndim,)
        Predicted landmarks by name, array-axis order.
    confidence : dict of str to float
    """

    label_map: np.ndarray | None = None
    scores: dict[int, float] = field(default_factory=dict)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)


@dataclass
class View:
    """A 2D picture of one case for the report: ``image`` ``(H, W)`` in [0, 1], label maps on its pixels."""

    image: np.ndarray
    label_map: np.ndarray | None = None
    truth: np.ndarray | None = None
    note: str = ""


class Runner:
    """Reads cases of one kind and runs methods on them.

    Parameters
    ----------
    kind : {"2d", "3d"}
    window : (low, high), optional
        Intensity window (e.g. CT HU) for matching and pictures; default robust percentiles.
    work_size : int
        Longest side of the 2D matching grid (pixels); volumes use their own grids.
    """

    def __init__(self, kind: str, window: tuple[float, float] | None = None, work_size: int = 256):
        if kind not in KINDS:
            raise ValueError(f"unknown data kind '{kind}' (known: {', '.join(KINDS)})")
        self.kind = kind
        self.ndim = 2 if kind == "2d" else 3
        self.window = window
        self.work_size = int(work_size)
        # cases.csv coordinate column suffix -> array axis; 2D keeps the file convention x = column
        self.point_columns = {"x": 1, "y": 0} if kind == "2d" else {"i": 0, "j": 1, "k": 2}
        self.element = "px" if kind == "2d" else "voxels"
        self.prediction_suffix = ".png" if kind == "2d" else ".nii.gz"

    # -- data ----------------------------------------------------------------------------------

    def read_case(self, entry: Entry) -> Case:
        """Read and check one listed case (one-line :class:`MedshotError` naming the file if bad)."""
        image = read_image(entry.image)
        if image.ndim != self.ndim:
            raise MedshotError(f"expected a {self.kind.upper()} image, got {image.ndim}D", entry.image)
        spacing = entry.spacing or _known_spacing(image)
        if spacing is not None and len(spacing) != self.ndim:
            raise MedshotError(f"spacing needs {self.ndim} values (one per array axis), got {len(spacing)}",
                               entry.where or entry.image)
        labels: tuple[int, ...] = ()
        if entry.mask is not None:
            mask, _ = read_label_map(entry.mask, image)
            labels = tuple(int(v) for v in np.unique(mask) if v != 0)
        landmarks: list[Landmark] = []
        if isinstance(entry.landmarks, Path):
            landmarks = read_landmarks(entry.landmarks, image, image_name=entry.image.name)
        elif entry.landmarks:
            landmarks = _inline_landmarks(entry.landmarks, image, entry)
        source = [Landmark(lm.name, image.index_to_source(lm.point)[0]) for lm in landmarks]
        shape = image.source.shape if image.ndim == 3 and image.source else image.shape
        affine = image.source.affine.copy() if image.ndim == 3 and image.source else None
        return Case(entry.name or path_stem(entry.image), entry.image, entry.mask, source, spacing, tuple(shape),
                    labels, affine)

    def truth(self, case: Case) -> np.ndarray:
        """The case's ground-truth label map, ``case.shape``."""
        image = read_image(case.image)
        return image.to_source_array(read_label_map(case.mask, image)[0])

    def truth_points(self, case: Case) -> dict[str, np.ndarray]:
        """The case's ground-truth landmarks by name, array-axis order, in the case's listed order."""
        return {lm.name: np.asarray(lm.point, float) for lm in case.landmarks}

    # -- methods -------------------------------------------------------------------------------

    def segmenter_names(self) -> list[str]:
        """Segmenters this kind offers (what ``all`` expands to)."""
        from ..segment import segmenter_names

        return segmenter_names(self.ndim)

    def segmenter_status(self, name: str) -> tuple[bool, str]:
        """Whether a segmenter named by the user runs on this kind here, and why not."""
        from ..segment import segmenter_names, segmenter_status

        known = segmenter_names()
        if name not in known:
            return False, f"unknown segmenter here (registered: {', '.join(known)})"
        if name not in segmenter_names(self.ndim):
            what = "2D images" if self.ndim == 2 else "volumes"
            return False, f"not available for {what} ({what} take {' or '.join(segmenter_names(self.ndim))})"
        return segmenter_status(name)

    def baseline_names(self) -> tuple[str, ...]:
        return BASELINES

    def baseline_status(self, name: str) -> tuple[bool, str]:
        return baseline_status(name)

    # -- running -------------------------------------------------------------------------------

    def make_template(self, case: Case, label_names: dict[int, str]) -> Template:
        return make_template(case, label_names, self.window)

    def template_labels(self, template: Template) -> dict[int, str]:
        return template.labels

    def make_shot(self, template: Template, backbone: str, segmenter: str):
        from ..pipeline import OneShot

        return OneShot(template, backbone=backbone, segmenter=segmenter, work_size=self.work_size,
                       window=self.window)

    def predict(self, shot, target: Case, landmarks: bool, masks: bool, baseline: str | None) -> Prediction:
        """Run one target (timed by the caller: reading the target is part of it)."""
        if baseline is None:
            result = shot.run(target.image, landmarks=landmarks, masks=masks)
        else:
            result = run_baseline(shot, target.image, baseline, landmarks, masks)
        image = result.image
        label_map = None if result.label_map is None else image.to_source_array(result.label_map)
        return Prediction(label_map, dict(result.scores),
                          {lm.name: image.index_to_source(lm.point)[0] for lm in result.landmarks},
                          {lm.name: lm.confidence for lm in result.landmarks})

    def save_prediction(self, path: Path, prediction: Prediction, target: Case) -> None:
        """Store a predicted label map at ``path`` (suffix :attr:`prediction_suffix`)."""
        labels = np.asarray(prediction.label_map)
        if self.ndim == 2:
            Path(path).write_bytes(png_bytes(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)))
            return
        Path(path).write_bytes(label_map_bytes(labels, Image(labels.astype(np.float32), target.affine, None, "nifti")))

    def view(self, target: Case, prediction_file: Path | None) -> View:
        """A 2D picture of a target with its stored prediction and its truth.

        Volumes: the slice ``k`` (source axis 2) where the truth (else the prediction) covers most
        voxels, shown with ``i`` across and ``j`` upwards.
        """
        image = read_image(target.image)
        pixels = normalize_intensity(image.to_source_array(image.array), self.window)
        truth = image.to_source_array(read_label_map(target.mask, image)[0]) if target.mask is not None else None
        label_map = None
        if prediction_file is not None and prediction_file.exists():
            label_map = _stored_labels(prediction_file, self.ndim)
        if self.ndim == 2:
            return View(pixels, label_map, truth)
        area = next((np.count_nonzero(m, axis=(0, 1)) for m in (truth, label_map) if m is not None and m.any()), None)
        k = int(np.argmax(area)) if area is not None else pixels.shape[2] // 2

        def show(a):
            return None if a is None else np.flipud(a[:, :, k].T)

        return View(show(pixels), show(label_map), show(truth), f"slice k = {k}")


def _stored_labels(path: Path, ndim: int) -> np.ndarray:
    """A stored prediction in its file's own array order (PNG, or NIfTI as written)."""
    if ndim == 2:
        return read_image(path).array.astype(np.int64)
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def runner_for(kind: str, window: tuple[float, float] | None = None, work_size: int = 256) -> Runner:
    """The runner of a dataset kind (``"2d"`` or ``"3d"``)."""
    return Runner(kind, window, work_size)


def make_template(case: Case, label_names: dict[int, str], window: tuple[float, float] | None = None) -> Template:
    """A :class:`Template` from a case's image, mask (every label; prompts sampled from it) and landmarks."""
    if case.mask is not None:
        template = Template.build(case.image, case.mask, label_names=label_names, window=window)
    else:
        template = Template(image_path=case.image, window=window)
    image = template.image
    template.landmarks = [Landmark(lm.name, image.source_to_index(lm.point)[0]) for lm in case.landmarks]
    template.validate()
    return template


def _known_spacing(image: Image) -> tuple[float, ...] | None:
    """Element size (mm) along the file's own array axes, when the file says (not for PNG and the like)."""
    if image.kind in ("raster", "array") or (image.kind == "dicom" and image.ndim == 2 and "spacing" not in image.meta):
        return None
    affine = image.source.affine if image.ndim == 3 and image.source is not None else image.affine
    return tuple(float(v) for v in np.sqrt(np.sum(np.square(affine[:3, : image.ndim]), axis=0)))


def _inline_landmarks(items: list[dict], image: Image, entry: Entry) -> list[Landmark]:
    """Landmarks listed in a JSON manifest: ``x, y`` (2D pixels), ``i, j, k`` (source voxels) or ``x_mm, ...``."""
    out = []
    try:
        for d in items:
            if image.ndim == 2:
                point = np.array([float(d["y"]), float(d["x"])])
            elif all(k in d for k in "ijk"):
                point = image.source_to_index([[float(d[k]) for k in "ijk"]])[0]
            else:
                point = image.world_to_index([[float(d[k]) for k in ("x_mm", "y_mm", "z_mm")]])[0]
            out.append(Landmark(str(d["name"]), point))
    except (KeyError, TypeError, ValueError) as exc:
        need = "x, y" if image.ndim == 2 else "i, j, k (voxels) or x_mm, y_mm, z_mm"
        raise MedshotError(f"case '{path_stem(entry.image)}': landmarks need name and {need} "
                           f"({type(exc).__name__}: {exc})", entry.where or entry.image) from exc
    return out
