"""Run a template on targets for the run panel, one target at a time, cancellable between targets (no Qt).

Each target's outputs are written as ``medshot localize`` / ``segment`` name them — the label map
``<stem>_mask.png`` (``.nii.gz`` for NIfTI and volumes, in the target's geometry) and the 3D
Slicer ``<stem>.mrk.json`` — plus ``review.csv``, every target's weakest score, weakest first.
A target that fails is reported with its one-line reason and the run goes on, as in a batch.
Corrections made in napari are saved beside them (:func:`save_corrections`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError

TASKS = {"localize": (True, False), "segment": (False, True), "localize + segment": (True, True)}
REVIEW_HEADER = ["target", "score", "status", "weakest", "reason"]
# Volumes take the carried label map ("classical") or a 3D random walker band around it (see volume/cli3d.py).
VOLUME_SEGMENTERS = {"classical": "none", "randomwalker": "randomwalker"}


@dataclass
class TargetOutcome:
    """One target's results, in medshot's coordinates (2D pixels / canonical volume; see :mod:`.layers`).

    ``points`` are ``(x, y)`` pixels in 2D and source voxels ``(i, j, k)`` for volumes;
    ``score`` is the weakest of the label scores and landmark confidences (NaN when failed).
    """

    path: Path
    stem: str
    image: object = None
    names: list[str] = field(default_factory=list)
    points: np.ndarray | None = None
    confidences: list[float] = field(default_factory=list)
    label_map: np.ndarray | None = None
    scores: dict[int, float] = field(default_factory=dict)
    score: float = math.nan
    status: str = "failed"
    weakest: str = ""
    reason: str = ""
    files: list[Path] = field(default_factory=list)
    label_values: dict[int, int] = field(default_factory=dict)  # internal label -> value in the mask files


def load_any_template(path: str | Path):
    """A 2D :class:`~medshot.template.Template` or a volume template, as the JSON says."""
    from ..template import Template
    from ..volume.template3d import VolumeTemplate, is_volume_template

    return VolumeTemplate.load(path) if is_volume_template(path) else Template.load(path)


def is_volume_template_object(template) -> bool:
    return hasattr(template, "landmarks_ijk")


def runnable_backbones() -> list[str]:
    """Backbones whose weights and packages are here (what ``medshot backbones`` marks ready)."""
    from ..features import backbone_entries

    return [e.name for e in backbone_entries() if e.available()[0]]


def runnable_segmenters(volume: bool) -> list[str]:
    """Segmenters that can run here; for volumes the two volume refinements."""
    if volume:
        return list(VOLUME_SEGMENTERS)
    from ..segment import segmenter_names, segmenter_status

    return [name for name in segmenter_names() if segmenter_status(name)[0]]


def list_any_targets(paths: list[str | Path], volume: bool) -> list[Path]:
    """Targets (files, folders) expanded as ``medshot localize`` expands them for this kind of template."""
    if volume:
        from ..volume.cli3d import list_volume_targets

        return list_volume_targets([str(p) for p in paths])
    from ..outdir import list_targets

    return list_targets(paths)


def run_targets(template_path: str | Path, targets: list[Path], out: str | Path, task: str = "localize + segment",
                backbone: str = "classical", segmenter: str = "classical",
                cancelled: Callable[[], bool] = lambda: False) -> Iterator[TargetOutcome]:
    """Yield one :class:`TargetOutcome` per target; stop before the next target once ``cancelled()``.

    Raises
    ------
    MedshotError
        Before any target: the template, the task or the output folder is unusable.
    """
    from ..outputs import make_output_dir

    template = load_any_template(template_path)
    volume = is_volume_template_object(template)
    if task not in TASKS:
        raise MedshotError(f"task must be one of {', '.join(TASKS)}, got '{task}'")
    want_landmarks, want_masks = TASKS[task]
    want_landmarks = want_landmarks and bool(template.landmarks)
    want_masks = want_masks and (template.mask is not None or bool(getattr(template, "prompts", None)))
    if not (want_landmarks or want_masks):
        raise MedshotError(f"the template has nothing to {task}", template_path)
    out = make_output_dir(out)
    shot = _make_shot(template, volume, backbone, segmenter)
    done: list[TargetOutcome] = []
    for path in map(Path, targets):
        if cancelled():
            return
        outcome = _run_one(shot, volume, path, out, want_landmarks, want_masks)
        done.append(outcome)
        _write_review(out, done)
        yield outcome


def _make_shot(template, volume: bool, backbone: str, segmenter: str):
    if volume:
        from ..volume.pipeline3d import VolumeShot

        if segmenter not in VOLUME_SEGMENTERS:
            raise MedshotError(f"volumes take the segmenter classical or randomwalker, not '{segmenter}'")
        return VolumeShot(template, backbone=backbone, refine=VOLUME_SEGMENTERS[segmenter])
    from ..pipeline import OneShot

    return OneShot(template, backbone=backbone, segmenter=segmenter)


def _run_one(shot, volume: bool, path: Path, out: Path, landmarks: bool, masks: bool) -> TargetOutcome:
    from ..batch import one_line
    from ..io import check_contrast, path_stem

    stem = path_stem(path) if not volume else _volume_stem(path)
    try:
        if volume:
            from ..volume.io3d import load_volume

            image = load_volume(path)
        else:
            from ..io import load_image

            image = load_image(path)
        check_contrast(image.array, path)
        result = shot.run(image, landmarks=landmarks, masks=masks)
    except MedshotError as exc:
        return TargetOutcome(path, stem, reason=one_line(exc.problem if exc.path == path else str(exc)))
    except Exception as exc:  # noqa: BLE001 - isolation, as in a batch: one target's failure ends only it
        return TargetOutcome(path, stem, reason=one_line(f"{type(exc).__name__}: {exc}"))
    outcome = TargetOutcome(path, stem, image=image, label_map=result.label_map if masks else None,
                            scores=dict(result.scores) if masks else {}, status="ok",
                            label_values=shot.template.label_values)
    if landmarks:
        outcome.names = [lm.name for lm in result.landmarks]
        outcome.confidences = [float(lm.confidence) for lm in result.landmarks]
        outcome.points = (np.array([lm.ijk for lm in result.landmarks], float).reshape(-1, 3) if volume
                          else result.landmarks_xy)
    _summarise(outcome, shot.template.labels)
    outcome.files = _write_outputs(outcome, shot, result, out, volume)
    return outcome


def _volume_stem(path: Path) -> str:
    from ..volume.io3d import volume_stem

    return volume_stem(path)


def _summarise(outcome: TargetOutcome, label_names: dict[int, str]) -> None:
    from ..pipeline import score_status

    items = [(label_names.get(label, f"label {label}"), float(s)) for label, s in outcome.scores.items()]
    items += list(zip(outcome.names, outcome.confidences))
    if items:
        outcome.weakest, outcome.score = min(items, key=lambda item: item[1])
        outcome.status = score_status(outcome.score)


def _write_outputs(outcome: TargetOutcome, shot, result, out: Path, volume: bool) -> list[Path]:
    from ..markups import landmark_markups_bytes, volume_markups_bytes
    from ..outputs import file_label_values, label_map_bytes, mask_suffix, write_bytes_atomic

    files: dict[str, bytes] = {}
    if outcome.label_map is not None:
        labels = file_label_values(outcome.label_map, shot.template.label_values)
        if volume:
            from ..volume.io3d import label_volume_bytes

            files[outcome.stem + "_mask.nii.gz"] = label_volume_bytes(labels, outcome.image)
        else:
            files[outcome.stem + mask_suffix(outcome.image)] = label_map_bytes(labels, outcome.image)
    if outcome.names:
        files[outcome.stem + ".mrk.json"] = (volume_markups_bytes(result.landmarks) if volume
                                            else landmark_markups_bytes(outcome.image, result.landmarks))
    return [write_bytes_atomic(out / name, blob) for name, blob in files.items()]


def review_order(outcomes: list[TargetOutcome]) -> list[TargetOutcome]:
    """Failed targets first, then by score, weakest first (what to look at first)."""
    return sorted(outcomes, key=lambda o: (o.status != "failed", o.score if not math.isnan(o.score) else -1.0))


def _write_review(out: Path, outcomes: list[TargetOutcome]) -> None:
    from ..outputs import write_csv

    rows = [[str(o.path), "" if math.isnan(o.score) else round(o.score, 4), o.status, o.weakest, o.reason]
            for o in review_order(outcomes)]
    write_csv(out / "review.csv", REVIEW_HEADER, rows)


def save_corrections(out: str | Path, frame, stem: str, label_map: np.ndarray | None = None,
                     landmarks: tuple[list[str], np.ndarray] | None = None,
                     label_values: dict[int, int] | None = None) -> list[Path]:
    """Write a corrected label map and/or moved landmarks of one target beside its outputs.

    Parameters
    ----------
    frame : Frame
        The target's frame (:mod:`.layers`).
    label_map : ndarray, optional
        Medshot layout (2D ``(H, W)``; volume canonical); written as ``<stem>_corrected_mask.png``
        (``.nii.gz`` for NIfTI and volumes, in the target's geometry).
    landmarks : (names, points), optional
        Points in napari data coordinates; written as ``<stem>_corrected.mrk.json`` (LPS mm) and
        ``<stem>_corrected_landmarks.csv`` (the CSV ``medshot template --landmarks`` reads).
    """
    from ..outputs import make_output_dir, mask_suffix, write_bytes_atomic
    from .writer import label_bytes_in_frame, write_landmarks

    out = make_output_dir(out)
    written = []
    if label_map is not None:
        suffix = "_mask.nii.gz" if frame.is_volume else mask_suffix(frame.source)
        path = out / f"{stem}_corrected{suffix}"
        written.append(write_bytes_atomic(path, label_bytes_in_frame(frame, label_map, path, label_values)))
    if landmarks is not None and len(landmarks[0]):
        for name in (f"{stem}_corrected.mrk.json", f"{stem}_corrected_landmarks.csv"):
            written.append(write_landmarks(out / name, frame, list(landmarks[0]), landmarks[1]))
    return written
