"""2D images (PNG/JPEG/TIFF, 2D NIfTI, DICOM) through :class:`medshot.pipeline.OneShot`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import MedshotError
from ...io import Image2D, load_image, load_label_map, normalize_intensity, path_stem, save_png
from ...template import Landmark, Template, read_landmarks_csv
from ..cases import Case, Entry
from .base import Prediction, Runner, View


class ImageRunner(Runner):
    """Runner for 2D images: cases.csv points are ``x`` = column, ``y`` = row (pixels)."""

    kind = "2d"
    point_columns = {"x": 1, "y": 0}
    element = "px"
    prediction_suffix = ".png"

    # -- data ----------------------------------------------------------------------------------

    def read_case(self, entry: Entry) -> Case:
        image = load_image(entry.image)
        spacing = entry.spacing or _spacing_of(image)
        if spacing is not None and len(spacing) != 2:
            raise MedshotError(f"spacing needs two values (rows, columns) for a 2D image, got {len(spacing)}",
                               entry.where or entry.image)
        labels: tuple[int, ...] = ()
        if entry.mask is not None:
            from ...volume.io3d import is_volume_path

            if is_volume_path(entry.mask):
                raise MedshotError(f"mask is a 3D volume but its image '{entry.image.name}' is 2D", entry.mask)
            mask = load_label_map(entry.mask, image.shape, image)
            labels = tuple(int(v) for v in np.unique(mask) if v != 0)
        landmarks = entry.landmarks
        if isinstance(landmarks, Path):
            landmarks = read_landmarks_csv(landmarks, image_name=entry.image.name)
        elif landmarks:
            landmarks = _inline_landmarks(landmarks, entry)
        return Case(entry.name or path_stem(entry.image), entry.image, entry.mask, list(landmarks or []), spacing,
                    image.shape, labels)

    def truth(self, case: Case) -> np.ndarray:
        assert case.mask is not None
        return load_label_map(case.mask, case.shape)  # type: ignore[arg-type]

    def truth_points(self, case: Case) -> dict[str, np.ndarray]:
        return {lm.name: np.array([lm.y, lm.x]) for lm in case.landmarks}

    # -- methods -------------------------------------------------------------------------------

    def segmenter_names(self) -> list[str]:
        from ...segment import segmenter_names

        return segmenter_names()

    def segmenter_status(self, name: str) -> tuple[bool, str]:
        from ...segment import segmenter_names, segmenter_status

        known = segmenter_names()
        if name not in known:
            return False, f"unknown segmenter here (registered: {', '.join(known)})"
        return segmenter_status(name)

    def baseline_names(self) -> tuple[str, ...]:
        from ...baselines import BASELINES

        return tuple(BASELINES)

    def baseline_status(self, name: str) -> tuple[bool, str]:
        from ...baselines import BASELINES, baseline_status

        if name not in BASELINES:
            return False, f"volumes only (images take {', '.join(BASELINES)})"
        return baseline_status(name)

    # -- running -------------------------------------------------------------------------------

    def make_template(self, case: Case, label_names: dict[int, str]) -> Template:
        return make_template(case, label_names)

    def template_labels(self, template: Template) -> dict[int, str]:
        return template.labels

    def make_shot(self, template: Template, backbone: str, segmenter: str):
        from ...pipeline import OneShot

        return OneShot(template, backbone=backbone, segmenter=segmenter, work_size=self.work_size,
                       window=self.window)

    def predict(self, shot, target: Case, landmarks: bool, masks: bool, baseline: str | None) -> Prediction:
        result = shot.run(target.image, landmarks=landmarks, masks=masks, baseline=baseline)
        return Prediction(result.label_map, dict(result.scores),
                          {lm.name: np.array([lm.y, lm.x]) for lm in result.landmarks},
                          {lm.name: lm.confidence for lm in result.landmarks})

    def save_prediction(self, path: Path, prediction: Prediction, target: Case) -> None:
        assert prediction.label_map is not None
        save_png(path, np.asarray(prediction.label_map, np.uint8))

    def view(self, target: Case, prediction_file: Path | None) -> View:
        image = load_image(target.image)
        label_map = None
        if prediction_file is not None and prediction_file.exists():
            from PIL import Image

            with Image.open(prediction_file) as im:
                label_map = np.asarray(im)
        truth = load_label_map(target.mask, image.shape) if target.mask is not None else None
        return View(normalize_intensity(image.array, self.window), label_map, truth)


def make_template(case: Case, label_names: dict[int, str]) -> Template:
    """A :class:`Template` from a 2D case's image, mask (prompts sampled from it) and landmarks."""
    if case.mask is not None:
        template = Template.build(case.image, case.mask, label_names=label_names)
    else:
        template = Template(image_path=case.image)
    template.landmarks = list(case.landmarks)
    template.validate()
    return template


def _spacing_of(image: Image2D) -> tuple[float, float] | None:
    if image.kind == "dicom" and "spacing_yx" in image.meta:
        return tuple(image.meta["spacing_yx"])  # type: ignore[return-value]
    if image.kind == "nifti" and image.affine is not None:
        zooms = np.sqrt(np.sum(np.square(image.affine[:3, :2]), axis=0))  # array axes 0 (rows), 1 (columns)
        return float(zooms[0]), float(zooms[1])
    return None


def _inline_landmarks(items: list[dict], entry: Entry) -> list[Landmark]:
    try:
        return [Landmark(str(d["name"]), float(d["x"]), float(d["y"])) for d in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise MedshotError(f"case '{entry.image.name}': landmarks need name, x, y ({type(exc).__name__}: {exc})",
                           entry.where or entry.image) from exc
