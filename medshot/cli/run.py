"""``medshot localize | segment --template T TARGETS...``: one batch code path for 2D images and volumes.

Everything is checked before anything is written: the template, the options, the targets (2D
images are read in full; volumes by their headers only, since reading 2,000 CT volumes twice would
double a night's I/O, so a problem in a volume's data fails that target alone) and that no output
lands on an input. The targets then run through :func:`medshot.cli.batch.run_batch` with a *work*
function per command. What differs between 2D and volumes is only what the files hold: the
landmark table's coordinate columns (2D ``x, y`` pixels; volumes source voxels ``i, j, k`` and
world mm), the size columns of the results table, and the overlays (:mod:`medshot.viz`).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .batch_mode import add_options as add_batch_mode_options

LANDMARKS_HEADER = {
    2: ["target", "landmark", "x", "y", "confidence", "status", "reason"],
    3: ["target", "landmark", "i", "j", "k", "x_mm", "y_mm", "z_mm", "confidence", "status", "reason"],
}
RESULTS_HEADER = {
    2: ["target", "label", "area_px", "score", "seconds", "status", "reason"],
    3: ["target", "label", "volume_voxels", "volume_ml", "score", "seconds", "status", "reason"],
}


# ------------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    for name, help_text in (("localize", "find the template's landmarks in targets (images or volumes)"),
                            ("segment", "segment the template's structures in targets (images or volumes)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("targets", nargs="+", metavar="TARGET",
                       help="image or volume files, DICOM series folders, or folders of them")
        p.add_argument("--template", required=True, action="append",
                       help="template JSON (from `medshot template`); give it several times to fuse several templates")
        p.add_argument("--out", required=True, help="output folder")
        _add_model_options(p, segmenter=name == "segment")
        g = p.add_argument_group("several templates")
        g.add_argument("--top-k", type=int, default=None, metavar="K",
                       help="per target, fuse only the K templates whose correspondences verify best (default: all)")
        g.add_argument("--fusion", choices=["local", "vote"], default="local",
                       help="label maps: vote weighted per pixel by local similarity (default) or per template only")
        if name == "segment":
            p.add_argument("--no-dicom-out", action="store_true",
                           help="DICOM targets: do not write the DICOM SEG and RTSTRUCT beside the label map")
        _add_batch_options(p)
        add_batch_mode_options(p)


def _add_model_options(p: argparse.ArgumentParser, segmenter: bool = False) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=None,
                   help="feature backbone (default: classical, weights-free); see `medshot backbones`")
    g.add_argument("--weights", default=None,
                   help="backbone weights: a save_pretrained folder, checkpoint file or hub id")
    g.add_argument("--layer", type=int, default=None, help="ViT layer to read features from")
    g.add_argument("--facet", choices=["token", "key", "query", "value"], default=None, help="ViT facet")
    g.add_argument("--stride", type=int, default=None, help="patch-embedding stride (< patch size = overlap)")
    g.add_argument("--log-bin", action="store_true", default=None, help="neighbourhood log binning (17 bins)")
    if segmenter:
        g.add_argument("--segmenter", default=None,
                       help="promptable segmenter (default: classical, weights-free; e.g. sam_vit_b, images only)")
        g.add_argument("--segmenter-weights", default=None, help="segmenter weights: folder, .pth file or hub id")
    g.add_argument("--work-size", type=int, default=256, help="images: longest side of the matching grid (pixels)")
    g.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="intensity window, e.g. CT HU -160 240 (default: robust percentiles per image)")
    g.add_argument("--work-spacing", type=float, default=None, metavar="MM",
                   help="volumes: working voxel size in mm (default: automatic)")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batch")
    g.add_argument("--resume", action="store_true",
                   help="skip targets already done in --out with the same template and settings")
    g.add_argument("--workers", type=_workers, default="auto", metavar="N|auto",
                   help="run targets in N local processes (default auto: one per core, at most one per target "
                        "and per 4 GB of free memory for volumes; 1: here, serially)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help='run targets on an existing Dask cluster, e.g. tcp://host:8786 (pip install "medshot[dask]")')
    g.add_argument("--quiet", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------


def cmd_localize(args: argparse.Namespace) -> int:
    from .batch import BatchSpec

    check_batch_options(args)
    shot = make_shot(args)
    if not shot.template.landmarks:
        raise MedshotError("template has no landmarks to localize", args.template[0])
    ndim = shot.ndim
    files = check_targets(args, ndim)
    stems = refuse_colliding_stems(files)
    refuse_overwriting_inputs(args.out, [n for s in stems for n in (s + ".mrk.json", s + "_overlay.png")],
                              [*args.template, *template_files(shot), *files])
    spec = BatchSpec("localize", "landmarks.csv", LANDMARKS_HEADER[ndim], localize_work, _unit(ndim))
    return _run(args, spec, shot, files)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..data.read import suffix
    from .batch import BatchSpec

    check_batch_options(args)
    shot = make_shot(args)
    t = shot.template
    if not t.prompts and t.mask is None:
        raise MedshotError("template has no mask or prompts to segment", args.template[0])
    shot.segmenter  # noqa: B018 - load it now: a missing checkpoint is one error, not one per target
    ndim = shot.ndim
    files = check_targets(args, ndim)
    stems = refuse_colliding_stems(files)
    values = t.label_values
    names = [stem + _mask_suffix(f) for f, stem in zip(files, stems)]
    if ndim == 2:
        names += [stem + "_overlay.png" for stem in stems]
    else:
        names += [f"{stem}_label{values.get(label, label)}_overlay.png" for stem in stems for label in t.labels]
    dicom = not args.no_dicom_out and any(f.is_dir() or suffix(f) in (".dcm", ".dicom") for f in files)
    if dicom:
        from ..data.dicom_out import EXTRA, RTSTRUCT_SUFFIX, SEG_SUFFIX, dicom_writers_installed

        names += [stem + s for stem in stems for s in (SEG_SUFFIX, RTSTRUCT_SUFFIX)]
        if not dicom_writers_installed():  # said once, here, rather than once per target
            print(f"medshot: note: DICOM SEG/RTSTRUCT are not written: {EXTRA} adds them", file=sys.stderr)
            dicom = False
    refuse_overwriting_inputs(args.out, names, [*args.template, *template_files(shot), *files])
    work = functools.partial(segment_work, dicom_out=dicom)
    spec = BatchSpec("segment", "results.csv", RESULTS_HEADER[ndim], work, _unit(ndim))
    return _run(args, spec, shot, files)


COMMANDS = {"localize": cmd_localize, "segment": cmd_segment}


def _unit(ndim: int) -> str:
    return "volume" if ndim == 3 else "image"


def _mask_suffix(target: Path) -> str:
    """The mask name :func:`medshot.data.write.mask_suffix` will give this target, from its name alone."""
    from ..data.read import NIFTI_SUFFIXES, suffix

    return "_mask.nii.gz" if target.is_dir() or suffix(target) in NIFTI_SUFFIXES else "_mask.png"


def _run(args: argparse.Namespace, spec, shot, files: list[Path]) -> int:
    from .batch import run_batch
    from .batch_mode import batch_options, fallback, run_in_batch_mode

    if hasattr(shot, "templates"):  # several templates: each row says how much each counted
        spec.header = [*spec.header[:-2], "templates", *spec.header[-2:]]
    settings = batch_settings(args, getattr(shot, "templates", [shot.template]))
    options = batch_options(args)
    note = "" if options is None else fallback(shot, files, options)
    if options is not None and not note:
        return run_in_batch_mode(args, spec, shot, files, refuse_colliding_stems(files), settings, options)
    code = run_batch(spec, shot, files, args.out, settings, resume=args.resume, workers=args.workers,
                     scheduler=args.scheduler, quiet=args.quiet)
    if note:
        print(f"medshot: note: {note}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------------
# Checks before anything is written
# ------------------------------------------------------------------------------------------------


def backbone_options(args: argparse.Namespace) -> dict:
    return {"weights": args.weights, "layer": args.layer, "facet": args.facet, "stride": args.stride,
            "log_bin": args.log_bin}


def template_files(shot) -> list:
    """The image and mask files of every template of a shot (one template or an ensemble)."""
    return [p for t in getattr(shot, "templates", [shot.template]) for p in (t.image_path, t.mask_path)]


def method_from_templates(args: argparse.Namespace, templates: list) -> None:
    """Options the user left unset take what ``medshot select`` wrote into the (first) template, else defaults."""
    chosen = templates[0].method
    for key in ("backbone", "layer", "facet", "stride", "log_bin", "segmenter"):
        if hasattr(args, key) and getattr(args, key) is None and chosen.get(key) is not None:
            setattr(args, key, chosen[key])
    args.backbone = args.backbone or "classical"
    if hasattr(args, "segmenter"):
        args.segmenter = args.segmenter or "classical"


def make_shot(args: argparse.Namespace):
    """The templates (loaded and validated) and everything about them computed once: a :class:`OneShot`.

    Several ``--template`` give an :class:`~medshot.pipeline.Ensemble` (results fused per target).
    """
    from ..data.template import Template
    from ..pipeline import OneShot
    from ..segment import check_segmenter

    templates = [Template.load(path) for path in args.template]
    if len({t.ndim for t in templates}) > 1:
        raise MedshotError("the templates mix 2D images and volumes", args.template[0])
    template = templates[0]
    method_from_templates(args, templates)
    if args.top_k is not None and args.top_k < 1:
        raise MedshotError(f"--top-k must be at least 1, got {args.top_k}")
    segmenter = getattr(args, "segmenter", None) or "classical"
    check_segmenter(segmenter, template.ndim)
    if getattr(args, "segmenter_weights", None):
        from ..segment import get_segmenter, segmenter_checkpoint

        if segmenter_checkpoint(segmenter) is None:
            raise MedshotError(f"--segmenter-weights is for the Segment Anything segmenters; '{segmenter}' "
                               "needs no weights")
        segmenter = get_segmenter(segmenter, weights=args.segmenter_weights)
    several = {"top_k": args.top_k, "fusion": args.fusion} if len(templates) > 1 else {}
    return OneShot(templates if several else template, backbone=args.backbone, segmenter=segmenter,
                   work_size=args.work_size, window=tuple(args.window) if args.window else None,
                   backbone_options=backbone_options(args), work_spacing=getattr(args, "work_spacing", None),
                   **several)


def batch_settings(args: argparse.Namespace, templates: list) -> dict:
    """Everything that decides a batch's results, for the run record (``--resume`` compares it)."""
    from .. import __version__
    from .outdir import file_digest

    keys = ("backbone", "weights", "layer", "facet", "stride", "log_bin", "segmenter", "segmenter_weights",
            "work_size", "window", "work_spacing", "top_k", "fusion")
    settings = {k: getattr(args, k, None) for k in keys}
    settings.update(command=args.command, medshot=__version__)
    for i, (path, t) in enumerate(zip(args.template, templates)):
        suffix = f"_{i + 1}" if i else ""  # one template keeps the record's earlier keys
        settings.update({f"template{suffix}": str(Path(path).resolve()),
                         f"template{suffix}_sha256": file_digest(Path(path)),
                         f"image{suffix}_sha256": file_digest(Path(t.image_path)),
                         f"mask{suffix}_sha256": file_digest(Path(t.mask_path)) if t.mask_path else None})
    return settings


def _workers(text: str) -> int | str:
    """``--workers``: ``auto`` or a whole number (checked with the other batch options)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got '{text}'") from None


def check_batch_options(args: argparse.Namespace) -> None:
    from .batch_mode import batch_options

    batch_options(args)
    if args.workers == "auto":  # a cluster, when given, runs the targets; auto then asks for nothing here
        return
    if args.workers < 1:
        raise MedshotError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.scheduler:
        raise MedshotError("give --workers or --scheduler, not both")


def check_targets(args: argparse.Namespace, ndim: int) -> list[Path]:
    """List the targets and check each, so that a bad one fails before any output; notes go to stderr.

    A 2D image is read (a truncated file, a constant image fail here); a volume is checked by its
    header only (a 3D NIfTI or a DICOM series folder), its data being read when it is processed.
    """
    from ..data.read import check_contrast, is_volume_path, missing_note, read_image
    from ..data.targets import list_targets, refuse_out_in_targets

    files = list_targets(args.targets, volumes=ndim == 3)
    refuse_out_in_targets(args.out, args.targets, files)
    for f in files:
        volume = is_volume_path(f)
        if ndim == 3:
            if not volume:
                raise MedshotError("template is a volume but this target is not a 3D NIfTI or DICOM series folder", f)
            continue
        if volume:
            raise MedshotError("target is a volume but the template is a 2D image (make a volume template, or "
                               "give one slice of it)", f)
        image = read_image(f)
        check_contrast(image.array, f)
        for note in (missing_note(image.meta), image.meta.get("frame_note")):
            if note:
                print(f"medshot: note: {f}: {note}", file=sys.stderr)
    return files


def refuse_colliding_stems(files: list[Path]) -> list[str]:
    """The targets' names without suffix; an error when two share one (their outputs would overwrite each other)."""
    from ..data.image import path_stem

    stems = [path_stem(f) for f in files]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise MedshotError(f"several targets share the file stem(s) {', '.join(dup)}; outputs would collide")
    return stems


def refuse_overwriting_inputs(out: str | Path, names: list[str], inputs: list) -> None:
    """No output of the batch may land on an input file (the template's image or mask, say)."""
    protected = {Path(i).resolve() for i in inputs if i is not None}
    for name in names:
        if (Path(out) / name).resolve() in protected:
            raise MedshotError("an output would overwrite this input file; choose another --out", Path(out) / name)


# ------------------------------------------------------------------------------------------------
# One target (run here, in a worker process or on a Dask worker)
# ------------------------------------------------------------------------------------------------


def _load(shot, path: Path):
    from ..data.read import check_contrast

    image = shot.load(path)
    check_contrast(image.array, path)
    return image


def localize_work(shot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """One target of ``medshot localize``: a 3D Slicer ``<stem>.mrk.json`` and one row per landmark."""
    from ..core.intensity import intensity_range
    from ..data.markups import markups_bytes
    from ..pipeline import score_status
    from .pictures import landmark_pictures

    image = _load(shot, path)
    result = shot.localize(image)
    names = [lm.name for lm in result.landmarks]
    descriptions = [f"medshot confidence {lm.confidence:.3f} ({score_status(lm.confidence)})"
                    for lm in result.landmarks]
    files = {image.stem + ".mrk.json": markups_bytes(image, names, result.landmark_points, descriptions)}
    files.update(landmark_pictures(image, result.landmark_points, names, intensity_range(image.array, shot.window)))
    return files, [[lm.name, *landmark_columns(image, lm), round(lm.confidence, 4), *template_weights(shot, result),
                    score_status(lm.confidence), lm.reason] for lm in result.landmarks]


def template_weights(shot, result) -> list[str]:
    """With several templates, the ``templates`` column: ``name:weight`` of each, ``;``-separated."""
    if not hasattr(shot, "templates"):
        return []
    return [";".join(f"{name}:{w:.3f}" for name, w in result.templates.items())]


def landmark_columns(image, landmark) -> list[float]:
    """A found landmark's coordinates as ``landmarks.csv`` gives them.

    2D: ``x, y`` (column, row) pixels of the target; volumes: ``i, j, k`` voxel indices of the
    target file's own array, then ``x_mm, y_mm, z_mm`` world RAS.
    """
    if image.ndim == 2:
        row, col = landmark.point
        return [round(float(col), 3), round(float(row), 3)]
    ijk = image.index_to_source(landmark.point)[0]
    return [round(float(v), 3) for v in ijk] + [round(float(v), 3) for v in landmark.world]


def segment_work(shot, path: Path, dicom_out: bool = True) -> tuple[dict[str, bytes], list[list]]:
    """One target of ``medshot segment``: its label map (in its own geometry), overlays (and, for a DICOM
    target unless ``dicom_out`` is False, a DICOM SEG and RTSTRUCT), one row per label."""
    from ..core.intensity import intensity_range
    from ..data.write import file_label_values, label_map_bytes, mask_suffix
    from ..pipeline import score_status
    from .pictures import dicom_results, label_names, segment_pictures

    image = _load(shot, path)
    start = time.perf_counter()
    result = shot.segment(image)
    seconds = time.perf_counter() - start
    label_map = result.label_map
    t = shot.template
    values = t.label_values
    labels = sorted(set(result.scores) | set(t.labels)) or sorted(int(v) for v in np.unique(label_map) if v)
    files = {image.stem + mask_suffix(image): label_map_bytes(file_label_values(label_map, values), image)}
    files.update(segment_pictures(image, label_map, labels, values, label_names(t, labels, values),
                                  intensity_range(image.array, shot.window)))
    if dicom_out:
        files.update(dicom_results(image, label_map, t, labels, values))
    rows = []
    for label in labels:
        score = result.scores.get(label, 0.0)
        n = int(np.sum(label_map == label))
        size = [n] if image.ndim == 2 else [n, round(n * voxel_ml(image), 4)]
        rows.append([values.get(label, label), *size, round(score, 4), round(result.seconds or seconds, 3),
                     *template_weights(shot, result), score_status(score),
                     result.reasons.get(label, "") or ("" if score_status(score) == "ok" else "no result for it")])
    return files, rows


def voxel_ml(image) -> float:
    """Volume of one voxel in millilitres."""
    return float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0
