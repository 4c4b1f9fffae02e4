"""The volume paths of ``medshot template | localize | segment``.

:mod:`medshot.cli` hands a command over to this module when its input is a volume (a 3D NIfTI
without ``--slice``, or a DICOM series folder) or its template JSON describes one. The behaviour
matches the 2D commands: every input is checked before anything is written (volume targets by
their headers only: reading 2,000 CT volumes twice would double a night's I/O, so a problem in a
volume's data fails that target alone), the batch runs through the same loop as 2D
(:mod:`medshot.batch`: isolation, run record, ``--resume``, workers), and a problem a user can fix
is one line naming the file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .io3d import dicom_files, is_dicom_series_dir, nifti_is_volume, volume_stem

PLANES = ("axial", "coronal", "sagittal")


def template_input_is_volume(args: argparse.Namespace) -> bool:
    """``medshot template``: a 3D NIfTI without ``--slice`` or a DICOM series folder."""
    from .io3d import is_volume_path

    return is_volume_path(args.image, getattr(args, "slice", None))


def template_json_is_volume(path: str | Path) -> bool:
    from .template3d import is_volume_template

    return is_volume_template(path)


# ------------------------------------------------------------------------------------------------


def cmd_template_3d(args: argparse.Namespace) -> int:
    from ..cli import _label_choice, _refuse_input_overwrite
    from .template3d import VolumeTemplate

    labels, names = _label_choice(args)
    template = VolumeTemplate.build(args.image, args.mask, args.landmarks, labels=labels, label_names=names,
                                    window=tuple(args.window) if args.window else None)
    out = Path(args.out)
    _refuse_input_overwrite(out, [args.image, args.mask, args.landmarks])
    template.save(out)
    vol = template.image
    print(f"wrote {out}: volume {'x'.join(map(str, vol.source_shape))} @ "
          f"{'x'.join(f'{s:.3g}' for s in vol.spacing)} mm, {len(template.landmarks)} landmarks, "
          f"{len(template.labels)} labels")
    return 0


def list_volume_targets(paths: list[str]) -> list[Path]:
    """Expand targets into volume paths, checking each cheaply (headers only) before any work.

    A target is a 3D NIfTI file, a DICOM series folder, or a folder holding 3D NIfTI files and/or
    DICOM series sub-folders; medshot's own outputs (``*_mask.nii.gz``, folders holding a run record)
    are never taken as targets.
    """
    from ..outdir import is_output_name, refuse_output_folder

    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MedshotError("file not found", p)
        if p.is_dir():
            refuse_output_folder(p)
            if is_dicom_series_dir(p):
                out.append(p)
                continue
            found = [q for q in sorted(p.iterdir()) if (q.is_file() and _is_nifti(q) and not is_output_name(q))
                     or (q.is_dir() and is_dicom_series_dir(q))]
            if not found:
                hint = " (a single DICOM file is not a series)" if dicom_files(p) else ""
                raise MedshotError(f"folder holds no volume (3D .nii/.nii.gz or DICOM series folder){hint}", p)
            out.extend(found)
        else:
            out.append(p)
    for p in out:
        if p.is_file() and not (_is_nifti(p) and nifti_is_volume(p)):
            raise MedshotError("template is a volume but this target is not a 3D NIfTI or DICOM series folder", p)
    return out


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith((".nii", ".nii.gz"))


def _make_volume_shot(args: argparse.Namespace):
    from ..cli import backbone_options
    from .pipeline3d import VolumeShot
    from .template3d import VolumeTemplate

    template = VolumeTemplate.load(args.template)
    segmenter = getattr(args, "segmenter", None) or "classical"
    # For volumes the weights-free segmenter is the carried label map with 3D clean-up; the random
    # walker band refinement is opt-in because it lowered Dice on the evaluation volumes (docs/volumes.md).
    refines = {"classical": "none", "none": "none", "randomwalker": "randomwalker"}
    if segmenter not in refines:
        raise MedshotError(f"segmenter '{segmenter}' works on 2D images only; volumes take 'classical' (carried "
                           f"label map, largest component, holes filled) or 'randomwalker' (plus a 3D random "
                           f"walker in a band around each boundary)")
    refine = refines[segmenter]
    return VolumeShot(template, backbone=args.backbone, refine=refine,
                      work_spacing=getattr(args, "work_spacing", None),
                      window=tuple(args.window) if args.window else None, backbone_options=backbone_options(args))


def _unique_stems(targets: list[Path]) -> None:
    stems = [volume_stem(t) for t in targets]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise MedshotError(f"several targets share the name(s) {', '.join(dup)}; outputs would collide")


LANDMARKS_HEADER_3D = ["target", "landmark", "i", "j", "k", "x_mm", "y_mm", "z_mm", "confidence", "status", "reason"]
RESULTS_HEADER_3D = ["target", "label", "volume_voxels", "volume_ml", "score", "seconds", "status", "reason"]


def _load_target(path: Path):
    from ..io import check_contrast
    from .io3d import load_volume

    vol = load_volume(path)
    check_contrast(vol.array, path)
    return vol


def localize_work_3d(shot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """One target of ``medshot localize`` on volumes: a 3D Slicer ``<stem>.mrk.json``, one row per landmark."""
    from ..markups import volume_markups_bytes
    from ..pipeline import score_status

    result = shot.localize(_load_target(path))
    files = {volume_stem(path) + ".mrk.json": volume_markups_bytes(result.landmarks)}
    return files, [[lm.name, *[round(float(v), 3) for v in lm.ijk], *[round(float(v), 3) for v in lm.xyz],
                    round(lm.confidence, 4), score_status(lm.confidence)] for lm in result.landmarks]


def segment_work_3d(shot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """One target of ``medshot segment`` on volumes: its label map, an overlay per structure, a row per label."""
    from ..outputs import file_label_values, png_bytes
    from ..pipeline import score_status
    from .io3d import label_volume_bytes

    vol = _load_target(path)
    start = time.perf_counter()
    result = shot.segment(vol)
    seconds = time.perf_counter() - start
    vol = result.volume
    stem = volume_stem(path)
    values = shot.template.label_values
    files = {stem + "_mask.nii.gz": label_volume_bytes(file_label_values(result.label_map, values), vol)}
    rows = []
    for label in sorted(shot.template.labels) or sorted(int(v) for v in np.unique(result.label_map) if v):
        value = values.get(label, label)
        pic = structure_overlay(vol.array, result.label_map, label, vol.spacing, result.window)
        if pic is not None:
            files[f"{stem}_label{value}_overlay.png"] = png_bytes(pic)
        n = int(np.sum(result.label_map == label))
        score = result.scores.get(label, 0.0)
        rows.append([value, n, round(n * vol.voxel_ml, 4), round(score, 4), round(seconds, 3), score_status(score)])
    return files, rows


def _run_3d(args: argparse.Namespace, spec, shot) -> int:
    from ..batch import run_batch
    from ..cli import batch_settings, check_batch_options, refuse_overwriting_inputs
    from ..outdir import refuse_out_in_targets

    check_batch_options(args)
    targets = list_volume_targets(args.targets)
    refuse_out_in_targets(args.out, args.targets, targets)
    t = shot.template
    _unique_stems(targets)
    suffix = "_mask.nii.gz" if spec.command == "segment" else ".mrk.json"
    names = [volume_stem(p) + suffix for p in targets]
    refuse_overwriting_inputs(args.out, names, [args.template, t.image_path, t.mask_path, *targets])
    return run_batch(spec, shot, targets, args.out, batch_settings(args, t), resume=args.resume,
                     workers=args.workers, scheduler=args.scheduler, quiet=args.quiet)


def cmd_localize_3d(args: argparse.Namespace) -> int:
    from ..batch import BatchSpec

    shot = _make_volume_shot(args)
    if not shot.template.landmarks:
        raise MedshotError("template has no landmarks to localize", args.template)
    return _run_3d(args, BatchSpec("localize", "landmarks.csv", LANDMARKS_HEADER_3D, localize_work_3d, "volume"), shot)


def cmd_segment_3d(args: argparse.Namespace) -> int:
    from ..batch import BatchSpec

    shot = _make_volume_shot(args)
    if shot.template.mask is None:
        raise MedshotError("template has no label map to segment", args.template)
    return _run_3d(args, BatchSpec("segment", "results.csv", RESULTS_HEADER_3D, segment_work_3d, "volume"), shot)


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A canonical (RAS) slice in the usual radiological view.

    axial (axis 2): anterior up, patient right on the image left; coronal (axis 1): superior up,
    patient right on the left; sagittal (axis 0): superior up, anterior on the left.
    """
    sl = np.take(volume, index, axis=axis)
    return sl.T[::-1, ::-1]


def structure_overlay(image: np.ndarray, labels: np.ndarray, label: int, spacing: np.ndarray,
                      window: tuple[float, float] | None, min_side: int = 256) -> np.ndarray | None:
    """Three orthogonal planes through a structure's centroid, side by side (RGB uint8); None if absent.

    Every panel is resampled to square pixels of one size so the three share one physical scale.
    """
    from skimage.transform import resize

    from ..viz import overlay
    from .pipeline3d import apply_window, normalize_window

    idx = np.argwhere(labels == label)
    if len(idx) == 0:
        return None
    win = window if window is not None else normalize_window(image, None)
    spacing = np.asarray(spacing, float)
    # Show the structure with context (its own size again, at least 30 mm) rather than the whole field of view.
    lo, hi = idx.min(0), idx.max(0) + 1
    margin = np.maximum(hi - lo, np.ceil(30.0 / spacing)).astype(int)
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    image, labels = image[box], labels[box]
    center = np.round(idx.mean(0)).astype(int) - lo
    pixel = float(spacing.min())
    panels = []
    extents = []
    for axis in (2, 1, 0):  # axial, coronal, sagittal
        rest = [a for a in range(3) if a != axis]
        # plane() transposes: rows follow the second remaining axis, columns the first.
        extents.append((labels.shape[rest[1]] * spacing[rest[1]], labels.shape[rest[0]] * spacing[rest[0]]))
    biggest = max(max(e) for e in extents) / pixel
    zoom = max(1.0, min_side / biggest)
    for axis, (h_mm, w_mm) in zip((2, 1, 0), extents):
        img = apply_window(plane(image, axis, center[axis]), win)
        lab = plane(labels, axis, center[axis])
        shape = (max(2, int(round(h_mm / pixel * zoom))), max(2, int(round(w_mm / pixel * zoom))))
        img = resize(img, shape, order=1, preserve_range=True, anti_aliasing=False)
        lab = resize(lab, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
        panels.append(overlay(img, lab, max_side=None))
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 4, 3), np.uint8)
    row = []
    for p in panels:
        pad = np.zeros((height - p.shape[0], p.shape[1], 3), np.uint8)
        row += [np.vstack([p, pad]), gap]
    return np.hstack(row[:-1])
