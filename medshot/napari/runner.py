"""Run a template on targets for the run panel, one target at a time, cancellable between targets (no Qt).

Each target's outputs are written as ``medshot localize`` / ``segment`` name them — the label map
``<stem>_mask.png`` (``.nii.gz`` for NIfTI and volumes, in the target's geometry) and the 3D
Slicer ``<stem>.mrk.json`` — plus ``review.csv``, every target's weakest score, weakest first.
A target that fails is reported with its one-line reason and the run goes on, as in a batch.
Corrections made in napari are saved beside them (:func:`save_corrections`). 2D images and
volumes take the same path (:class:`medshot.pipeline.OneShot`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError, one_line

TASKS = {"localize": (True, False), "segment": (False, True), "localize + segment": (True, True)}
REVIEW_HEADER = ["target", "score", "status", "weakest", "reason"]


@dataclass
class TargetOutcome:
    """One target's results.

    ``points`` are array indices ``(N, ndim)`` of ``image`` (2D ``(row, col)``; volumes the canonical
    ``(i, j, k)``, see :mod:`medshot.data.image`); ``label_map`` lies on ``image``'s grid; ``score``
    is the weakest of the label scores and landmark confidences (NaN when failed).
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


def load_template(path: str | Path):
    """The :class:`~medshot.data.template.Template` (2D or volume) a JSON describes."""
    from ..data.template import Template

    return Template.load(path)


def runnable_backbones() -> list[str]:
    """Backbones whose weights and packages are here (what ``medshot backbones`` marks ready)."""
    from ..features import backbone_entries

    return [e.name for e in backbone_entries() if e.available()[0]]


def runnable_segmenters(volume: bool) -> list[str]:
    """Segmenters that can run here (for a volume template, those that work on volumes)."""
    from ..segment import segmenter_names, segmenter_status

    return [name for name in segmenter_names(3 if volume else 2) if segmenter_status(name)[0]]


def list_targets(paths: list[str | Path], volume: bool) -> list[Path]:
    """Targets (files, folders) expanded into images, or volumes for a volume template.

    For a 2D template a folder holds image files (the slices of a DICOM series folder, one by one);
    for a volume template a folder holds volumes (3D NIfTI files, DICOM series folders) or is a
    DICOM series itself. A target of the other kind is an error naming it.
    """
    from ..data.read import is_volume_path
    from ..data.targets import list_targets as listed

    files = listed(paths, volumes=volume)  # as `medshot localize | segment` list them, outputs left out
    for f in files:
        if is_volume_path(f) != volume:
            raise MedshotError("template is a volume but this target is not a 3D NIfTI or DICOM series folder"
                               if volume else "target is a volume but the template is a 2D image", f)
    return files


def runs_in_batch_mode(count: int, batch_mode: bool) -> bool:
    """Whether :func:`run_targets` runs ``count`` targets in batch mode (too few: the plain pass, as the CLI)."""
    from ..pipeline.batch import BatchOptions

    return batch_mode and count >= BatchOptions().min_targets


def run_targets(template_path: str | Path, targets: list[Path], out: str | Path, task: str = "localize + segment",
                backbone: str = "classical", segmenter: str = "classical",
                cancelled: Callable[[], bool] = lambda: False,
                batch_mode: bool = False) -> Iterator[TargetOutcome | str]:
    """Yield one :class:`TargetOutcome` per target; stop before the next target once ``cancelled()``.

    With ``batch_mode`` (and enough targets, :func:`runs_in_batch_mode`) every target is yielded twice:
    after pass 1 (its outputs written, as in the plain pass), then after the rounds with pseudo-templates
    (:class:`medshot.pipeline.batch.Batch`; its outputs replaced). Between the two it yields notes (str) on
    the batch. Cancelled during the rounds, the targets keep the last complete round (or pass 1).

    Raises
    ------
    MedshotError
        Before any target: the template, the task, the segmenter or the output folder is unusable.
    """
    from ..data.write import make_output_dir
    from ..pipeline import OneShot

    template = load_template(template_path)
    if task not in TASKS:
        raise MedshotError(f"task must be one of {', '.join(TASKS)}, got '{task}'")
    want_landmarks, want_masks = TASKS[task]
    want_landmarks = want_landmarks and bool(template.landmarks)
    want_masks = want_masks and (template.mask is not None or bool(template.prompts))
    if not (want_landmarks or want_masks):
        raise MedshotError(f"the template has nothing to {task}", template_path)
    shot = OneShot(template, backbone=backbone, segmenter=segmenter)  # refuses a segmenter that cannot take it
    out = make_output_dir(out)
    paths = list(map(Path, targets))
    if runs_in_batch_mode(len(paths), batch_mode):
        yield from _run_batch(shot, paths, out, want_landmarks, want_masks, cancelled)
        return
    done: list[TargetOutcome] = []
    for path in paths:
        if cancelled():
            return
        outcome = _run_one(shot, path, out, want_landmarks, want_masks,
                           lambda image: shot.run(image, landmarks=want_landmarks, masks=want_masks))
        done.append(outcome)
        _write_review(out, done)
        yield outcome


class _Cancelled(Exception):
    pass


def _run_batch(shot, paths: list[Path], out: Path, landmarks: bool, masks: bool,
               cancelled: Callable[[], bool]) -> Iterator[TargetOutcome | str]:
    from ..pipeline.batch import Batch

    batch = Batch(shot, landmarks=landmarks, masks=masks)
    done: dict[Path, TargetOutcome] = {}
    found = {}

    def first(image, path):
        found[path] = batch.first(image)
        return found[path].result

    for path in paths:
        if cancelled():
            return
        done[path] = _run_one(shot, path, out, landmarks, masks, lambda image, path=path: first(image, path))
        _write_review(out, list(done.values()))
        yield done[path]
    ok = [p for p in paths if p in found]
    yield f"batch mode: matching {len(ok)} target(s) again with pseudo-templates…"

    def rounds(function, *iterables):  # a round's map that stops at a cancel (between targets)
        results = []
        for args in zip(*iterables):
            if cancelled():
                raise _Cancelled
            results.append(function(*args))
        return results

    try:
        results = batch.propagate([found[p] for p in ok], map_function=rounds)
        yield f"batch mode: {batch.note}"
    except _Cancelled:
        if not batch.history:
            return
        results = batch.history[-1]
        yield f"batch mode cancelled: the targets keep round {len(batch.history)} of the batch"
    except Exception as exc:  # noqa: BLE001 - the rounds only refine: pass 1's outputs stay, and say why
        yield f"batch mode stopped ({one_line(str(exc))}): the targets keep pass 1"
        return
    for path, result in zip(ok, results):
        done[path] = _run_one(shot, path, out, landmarks, masks, lambda image, result=result: result,
                              image=result.image)
        _write_review(out, list(done.values()))
        yield done[path]


def _run_one(shot, path: Path, out: Path, landmarks: bool, masks: bool, match: Callable,
             image=None) -> TargetOutcome:
    """One target's outcome and outputs; ``match(image)`` gives its result (``image``: already loaded)."""
    from ..data.image import path_stem
    from ..data.read import check_contrast

    stem = path_stem(path)
    try:
        if image is None:
            image = shot.load(path)
            check_contrast(image.array, path)
        result = match(image)
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
        outcome.points = result.landmark_points
    _summarise(outcome, shot.template.labels)
    outcome.files = _write_outputs(outcome, shot, out)
    return outcome


def _summarise(outcome: TargetOutcome, label_names: dict[int, str]) -> None:
    from ..pipeline import score_status

    items = [(label_names.get(label, f"label {label}"), float(s)) for label, s in outcome.scores.items()]
    items += list(zip(outcome.names, outcome.confidences))
    if items:
        outcome.weakest, outcome.score = min(items, key=lambda item: item[1])
        outcome.status = score_status(outcome.score)


def _write_outputs(outcome: TargetOutcome, shot, out: Path) -> list[Path]:
    from ..data.markups import markups_bytes
    from ..data.write import file_label_values, label_map_bytes, mask_suffix, write_bytes_atomic
    from ..pipeline import score_status

    files: dict[str, bytes] = {}
    image = outcome.image
    if outcome.label_map is not None:
        labels = file_label_values(outcome.label_map, shot.template.label_values)
        files[outcome.stem + mask_suffix(image)] = label_map_bytes(labels, image)
    if outcome.names:
        descriptions = [f"medshot confidence {c:.3f} ({score_status(c)})" for c in outcome.confidences]
        files[outcome.stem + ".mrk.json"] = markups_bytes(image, outcome.names, outcome.points, descriptions)
    return [write_bytes_atomic(out / name, blob) for name, blob in files.items()]


def review_order(outcomes: list[TargetOutcome]) -> list[TargetOutcome]:
    """Failed targets first, then by score, weakest first (what to look at first)."""
    return sorted(outcomes, key=lambda o: (o.status != "failed", o.score if not math.isnan(o.score) else -1.0))


def _write_review(out: Path, outcomes: list[TargetOutcome]) -> None:
    from ..data.write import write_csv_atomic

    rows = [[str(o.path), "" if math.isnan(o.score) else round(o.score, 4), o.status, o.weakest, o.reason]
            for o in review_order(outcomes)]
    write_csv_atomic(out / "review.csv", REVIEW_HEADER, rows)  # rewritten after every target: never half a table


def save_corrections(out: str | Path, frame, stem: str, label_map: np.ndarray | None = None,
                     landmarks: tuple[list[str], np.ndarray] | None = None,
                     label_values: dict[int, int] | None = None) -> list[Path]:
    """Write a corrected label map and/or moved landmarks of one target beside its outputs.

    Parameters
    ----------
    frame : Frame
        The target's frame (:mod:`.layers`).
    label_map : ndarray, optional
        On the target's grid (2D ``(H, W)``; volume canonical); written as ``<stem>_corrected_mask.png``
        (``.nii.gz`` for NIfTI and volumes, in the target's geometry).
    landmarks : (names, points), optional
        Points in napari data coordinates; written as ``<stem>_corrected.mrk.json`` (LPS mm) and
        ``<stem>_corrected_landmarks.csv`` (the CSV ``medshot template --landmarks`` reads).
    """
    from ..data.write import make_output_dir, mask_suffix, write_bytes_atomic
    from .writer import label_bytes_in_frame, write_landmarks

    out = make_output_dir(out)
    written = []
    if label_map is not None:
        path = out / f"{stem}_corrected{mask_suffix(frame.source)}"
        written.append(write_bytes_atomic(path, label_bytes_in_frame(frame, label_map, path, label_values)))
    if landmarks is not None and len(landmarks[0]):
        for name in (f"{stem}_corrected.mrk.json", f"{stem}_corrected_landmarks.csv"):
            written.append(write_landmarks(out / name, frame, list(landmarks[0]), landmarks[1]))
    return written
