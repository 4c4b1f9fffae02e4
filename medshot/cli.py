"""Command line: ``medshot template | localize | segment | demo | backbones | evaluate | annotate``.

Every command checks all of its inputs before writing anything, writes each output atomically
and, on a problem a user can fix, prints one line naming the file and exits with status 2.
``localize`` and ``segment`` then run as a batch (:mod:`medshot.batch`): a target that fails is
recorded as failed and the batch goes on (exit status 1), and SIGINT keeps finished targets (130).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .core.errors import MedshotError
from .data.annotations import read_label_names

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_model_options(p: argparse.ArgumentParser, segmenter: bool = False) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="classical",
                   help="feature backbone (default: classical, weights-free); see `medshot backbones`")
    g.add_argument("--weights", default=None,
                   help="backbone weights: a save_pretrained folder, checkpoint file or hub id")
    g.add_argument("--layer", type=int, default=None, help="ViT layer to read features from")
    g.add_argument("--facet", choices=["token", "key", "query", "value"], default=None, help="ViT facet")
    g.add_argument("--stride", type=int, default=None, help="patch-embedding stride (< patch size = overlap)")
    g.add_argument("--log-bin", action="store_true", default=None, help="neighbourhood log binning (17 bins)")
    if segmenter:
        g.add_argument("--segmenter", default="classical",
                       help="promptable segmenter (default: classical, weights-free; e.g. sam_vit_b)")
        g.add_argument("--segmenter-weights", default=None, help="segmenter weights: folder, .pth file or hub id")
    g.add_argument("--work-size", type=int, default=256, help="longest side of the matching grid (pixels)")
    g.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="intensity window, e.g. CT HU -160 240 (default: robust percentiles per image)")
    g.add_argument("--work-spacing", type=float, default=None, metavar="MM",
                   help="volumes: working voxel size in mm (default: template field of view / 112, "
                        "at least its finest spacing)")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batch")
    g.add_argument("--resume", action="store_true",
                   help="skip targets already done in --out with the same template and settings")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="run targets in N local processes")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help='run targets on an existing Dask cluster, e.g. tcp://host:8786 (pip install "medshot[dask]")')
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def backbone_options(args: argparse.Namespace) -> dict:
    return {"weights": args.weights, "layer": args.layer, "facet": args.facet, "stride": args.stride,
            "log_bin": args.log_bin}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medshot", description=(
        "One-shot localization and segmentation of medical images: annotate one template, "
        "find the same landmarks and structures in new images."))
    parser.add_argument("--version", action="version", version=f"medshot {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("template", help="make template.json from an image, a mask and/or landmarks")
    p.add_argument("image", help="template image (PNG/JPEG/TIFF, NIfTI, DICOM) or volume (3D NIfTI, DICOM series "
                                 "folder)")
    p.add_argument("--mask", help="label map of the template (0 = background)")
    p.add_argument("--landmarks", help="CSV with columns name,x,y (or landmark_id,x,y; optional image column); "
                                       "volumes: name,i,j,k (voxels) or name,x_mm,y_mm,z_mm (RAS mm); "
                                       "or 3D Slicer markups (.mrk.json, .fcsv)")
    p.add_argument("--labels", help="comma-separated labels of the mask to use (default: all)")
    p.add_argument("--label-names", help="CSV with columns label,name")
    p.add_argument("--positive", type=int, default=5, help="positive prompt points per label (default 5)")
    p.add_argument("--negative", type=int, default=4, help="negative prompt points per label (default 4)")
    p.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="intensity window stored with the template (e.g. CT HU -160 240)")
    p.add_argument("--slice", type=int, default=None,
                   help="use one slice of a 3D NIfTI as a 2D template (default: the whole volume)")
    p.add_argument("--out", required=True, help="template JSON to write")

    for name, help_text in (("localize", "find the template's landmarks in targets"),
                            ("segment", "segment the template's structures in targets")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("targets", nargs="+", metavar="TARGET", help="image files or folders of images")
        p.add_argument("--template", required=True, help="template JSON (from `medshot template`)")
        p.add_argument("--out", required=True, help="output folder")
        _add_model_options(p, segmenter=name == "segment")
        _add_batch_options(p)

    p = sub.add_parser("demo", help="run end to end on a synthetic case the package makes (offline)")
    p.add_argument("--out", default="medshot-demo", help="output folder (default: medshot-demo)")

    sub.add_parser("backbones", help="list backbones and segmenters and whether each can run here")

    from .napari.annotate import add_annotate_parser  # no napari import: the base install lists it too

    add_annotate_parser(sub)

    p = sub.add_parser("evaluate", help="score methods and baselines on a labelled dataset (tables, plots, report)")
    p.add_argument("--data", required=True,
                   help="dataset folder (images/ + masks/ and/or landmarks.csv; 2D images or 3D volumes) or manifest "
                        ".csv/.json")
    p.add_argument("--out", required=True, help="report folder (cases.csv, summary.csv, report.html, PNGs)")
    p.add_argument("--backbones", default="classical", help="comma-separated backbones, or 'all' (default: classical)")
    p.add_argument("--segmenters", default="classical",
                   help="comma-separated segmenters, or 'all' (default: classical; volumes: classical, "
                        "randomwalker)")
    p.add_argument("--baselines", default="identity,affine,bspline",
                   help="comma-separated atlas-registration baselines, or 'none' (default: identity,affine,bspline; "
                        "volumes: affine, bspline, affine@medshot, bspline@medshot)")
    p.add_argument("--templates", default="first", help="first | all (leave-one-out) | K (default: first)")
    p.add_argument("--template-choice", choices=["spread", "first"], default="spread",
                   help="how --templates K picks: spread evenly over the sorted cases, or the first K")
    p.add_argument("--split", choices=["all", "tune", "report"], default="all",
                   help="use one half of the cases (sorted by name, dealt alternately: tune = 1st, 3rd, ...; "
                        "report = 2nd, 4th, ...) as templates and targets, so that parameters chosen on one "
                        "half are reported on the other (default: all)")
    p.add_argument("--max-targets", type=int, default=None, help="at most N targets per template (quick runs)")
    p.add_argument("--work-size", type=int, default=256,
                   help="longest side of the matching grid (pixels; images only)")
    p.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="intensity window, e.g. CT HU -160 240 (default: robust percentiles per image)")
    p.add_argument("--restart", action="store_true", help="discard an earlier run in --out instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .batch import BatchInterrupted, one_line

    try:
        return int(COMMANDS[args.command](args) or 0)
    except MedshotError as exc:
        print(f"medshot: error: {one_line(str(exc), 1000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BatchInterrupted as exc:
        print(f"medshot: interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("medshot: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file system problem no check foresaw: still one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medshot: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


# ------------------------------------------------------------------------------------------------


def cmd_template(args: argparse.Namespace) -> int:
    from .volume.cli3d import cmd_template_3d, template_input_is_volume

    if template_input_is_volume(args):  # 3D NIfTI without --slice, or a DICOM series folder
        return cmd_template_3d(args)
    from .template import Template

    labels, names = _label_choice(args)
    template = Template.build(args.image, args.mask, args.landmarks, labels=labels, label_names=names,
                              n_positive=args.positive, n_negative=args.negative,
                              window=tuple(args.window) if args.window else None, slice_index=args.slice)
    out = Path(args.out)
    _refuse_input_overwrite(out, [args.image, args.mask, args.landmarks])
    template.save(out)
    n_prompts = sum(len(p.positive) + len(p.negative) for p in template.prompts)
    print(f"wrote {out}: {len(template.landmarks)} landmarks, {len(template.labels)} labels, "
          f"{n_prompts} prompt points")
    return 0


def _label_choice(args: argparse.Namespace) -> tuple[list[int] | None, dict[int, str] | None]:
    """``--labels`` and ``--label-names`` of the template command, parsed."""
    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError as exc:
            raise MedshotError(f"--labels must be comma-separated integers, got '{args.labels}'") from exc
    return labels, (read_label_names(args.label_names) if args.label_names else None)


def _refuse_input_overwrite(out: Path, inputs) -> None:
    for i in inputs:
        if i is not None and Path(i).exists() and Path(i).resolve() == out.resolve():
            raise MedshotError("refusing to overwrite an input file; choose another --out", out)


def _make_shot(args: argparse.Namespace, segmenter: str = "classical"):
    from .pipeline import OneShot
    from .template import Template

    template = Template.load(args.template)
    seg = segmenter
    if getattr(args, "segmenter", None):
        seg = args.segmenter
        if getattr(args, "segmenter_weights", None):
            from .segment import get_segmenter

            seg = get_segmenter(args.segmenter, weights=args.segmenter_weights)
    return OneShot(template, backbone=args.backbone, segmenter=seg, work_size=args.work_size,
                   window=tuple(args.window) if args.window else None, backbone_options=backbone_options(args))


def batch_settings(args: argparse.Namespace, template) -> dict:
    """Everything that decides a batch's results, for the run record (``--resume`` compares it)."""
    from .outdir import file_digest

    keys = ("backbone", "weights", "layer", "facet", "stride", "log_bin", "segmenter", "segmenter_weights",
            "work_size", "window", "work_spacing")
    settings = {k: getattr(args, k, None) for k in keys}
    settings.update(command=args.command, medshot=_version(), template=str(Path(args.template).resolve()),
                    template_sha256=file_digest(Path(args.template)),
                    image_sha256=file_digest(Path(template.image_path)),
                    mask_sha256=file_digest(Path(template.mask_path)) if template.mask_path else None)
    return settings


def check_batch_options(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise MedshotError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.scheduler:
        raise MedshotError("give --workers or --scheduler, not both")


def refuse_overwriting_inputs(out: str | Path, names: list[str], inputs: list) -> None:
    """No output of the batch may land on an input file (the template's image or mask, say)."""
    protected = {Path(i).resolve() for i in inputs if i is not None}
    for name in names:
        if (Path(out) / name).resolve() in protected:
            raise MedshotError("an output would overwrite this input file; choose another --out", Path(out) / name)


def _check_targets(args: argparse.Namespace) -> list[Path]:
    """List the targets and read each once, so that a bad file fails before any output; notes go to stderr."""
    from .io import check_contrast, load_image, missing_note
    from .outdir import list_targets, refuse_out_in_targets

    files = list_targets(args.targets)
    refuse_out_in_targets(args.out, args.targets, files)
    for f in files:
        image = load_image(f)
        check_contrast(image.array, f)
        note = missing_note(image.meta)
        if note:
            print(f"medshot: note: {f}: {note}", file=sys.stderr)
    return files


def _run(args: argparse.Namespace, spec, shot, files: list[Path]) -> int:
    from .batch import run_batch

    return run_batch(spec, shot, files, args.out, batch_settings(args, shot.template), resume=args.resume,
                     workers=args.workers, scheduler=args.scheduler, quiet=args.quiet)


LANDMARKS_HEADER = ["target", "landmark", "x", "y", "confidence", "status", "reason"]
RESULTS_HEADER = ["target", "label", "area_px", "score", "seconds", "status", "reason"]


def localize_work(shot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """One target of ``medshot localize``: a 3D Slicer ``<stem>.mrk.json`` and one row per landmark."""
    from .io import check_contrast, load_image
    from .markups import landmark_markups_bytes
    from .pipeline import score_status

    image = load_image(path)
    check_contrast(image.array, path)
    result = shot.localize(image)
    files = {image.stem + ".mrk.json": landmark_markups_bytes(image, result.landmarks)}
    return files, [[lm.name, round(lm.x, 3), round(lm.y, 3), round(lm.confidence, 4), score_status(lm.confidence)]
                   for lm in result.landmarks]


def segment_work(shot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """One target of ``medshot segment``: its mask and overlay (bytes) and one row per label."""
    from .io import check_contrast, load_image, normalize_intensity
    from .outputs import file_label_values, label_map_bytes, mask_suffix, png_bytes
    from .pipeline import score_status
    from .viz import overlay

    image = load_image(path)
    check_contrast(image.array, path)
    start = time.perf_counter()
    result = shot.segment(image)
    seconds = time.perf_counter() - start
    values = shot.template.label_values
    files = {
        image.stem + mask_suffix(image): label_map_bytes(file_label_values(result.label_map, values), image),
        image.stem + "_overlay.png": png_bytes(overlay(normalize_intensity(image.array, shot.window),
                                                       result.label_map)),
    }
    rows = []
    for label in sorted(set(result.scores) | set(shot.template.labels)):
        score = result.scores.get(label, 0.0)
        rows.append([values.get(label, label), int(np.sum(result.label_map == label)), round(score, 4),
                     round(seconds, 3), score_status(score)])
    return files, rows


def cmd_localize(args: argparse.Namespace) -> int:
    from .volume.cli3d import cmd_localize_3d, template_json_is_volume

    if template_json_is_volume(args.template):
        return cmd_localize_3d(args)
    from .batch import BatchSpec
    from .io import path_stem

    check_batch_options(args)
    shot = _make_shot(args)
    if not shot.template.landmarks:
        raise MedshotError("template has no landmarks to localize", args.template)
    files = _check_targets(args)
    _refuse_colliding_stems(files)  # one <stem>.mrk.json per target
    t = shot.template
    refuse_overwriting_inputs(args.out, [path_stem(f) + ".mrk.json" for f in files], [args.template, t.image_path])
    spec = BatchSpec("localize", "landmarks.csv", LANDMARKS_HEADER, localize_work)
    return _run(args, spec, shot, files)


def _refuse_colliding_stems(files: list[Path]) -> list[str]:
    """The targets' file stems; an error when two share one (their outputs would overwrite each other)."""
    from .io import path_stem

    stems = [path_stem(f) for f in files]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise MedshotError(f"several targets share the file stem(s) {', '.join(dup)}; outputs would collide")
    return stems


def cmd_segment(args: argparse.Namespace) -> int:
    from .volume.cli3d import cmd_segment_3d, template_json_is_volume

    if template_json_is_volume(args.template):
        return cmd_segment_3d(args)
    from .batch import BatchSpec
    from .io import NIFTI_SUFFIXES

    check_batch_options(args)
    shot = _make_shot(args)
    if not shot.template.prompts and shot.template.mask is None:
        raise MedshotError("template has no mask or prompts to segment", args.template)
    shot.segmenter  # noqa: B018 - load it now: a missing checkpoint is one error, not one per target
    files = _check_targets(args)
    stems = _refuse_colliding_stems(files)
    names = [n for f, stem in zip(files, stems) for n in
             (stem + ("_mask.nii.gz" if f.name.lower().endswith(NIFTI_SUFFIXES) else "_mask.png"),
              stem + "_overlay.png")]
    t = shot.template
    refuse_overwriting_inputs(args.out, names, [args.template, t.image_path, t.mask_path, *files])
    spec = BatchSpec("segment", "results.csv", RESULTS_HEADER, segment_work)
    return _run(args, spec, shot, files)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out))


def cmd_backbones(args: argparse.Namespace) -> int:
    from .features import backbone_entries
    from .segment import segmenter_names, segmenter_status

    print(f"{'backbone':<22} {'family':<14} {'ready':<6} detail")
    for e in backbone_entries():
        ok, why = e.available()
        print(f"{e.name:<22} {e.family:<14} {'yes' if ok else 'no':<6} {why}")
    print()
    print(f"{'segmenter':<22} {'ready':<6} detail")
    for name in segmenter_names():
        ok, why = segmenter_status(name)
        print(f"{name:<22} {'yes' if ok else 'no':<6} {why}")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from .napari.annotate import annotate

    return annotate(args.image, args.template, args.targets, args.out, args.screenshot)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.run import run_from_args

    return run_from_args(args)


COMMANDS = {
    "template": cmd_template,
    "localize": cmd_localize,
    "segment": cmd_segment,
    "demo": cmd_demo,
    "backbones": cmd_backbones,
    "evaluate": cmd_evaluate,
    "annotate": cmd_annotate,
}


if __name__ == "__main__":
    raise SystemExit(main())
