"""``medshot template IMAGE_OR_VOLUME``: a template JSON from an image or volume, a label map and landmarks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import MedshotError


def add_parser(sub) -> None:
    p = sub.add_parser("template", help="make template.json from an image or volume, a mask and/or landmarks")
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
    p.add_argument("--frame", type=int, default=None,
                   help="frame (0-based) of a multi-frame DICOM (a 2D image) or time point of a 4D NIfTI (a volume) "
                        "to use (default: a DICOM whose frames are evenly spaced slices is a volume, else frame 0; "
                        "targets are read with the default)")
    p.add_argument("--out", required=True, help="template JSON to write")


def cmd_template(args: argparse.Namespace) -> int:
    from ..data.template import Template

    labels, names = label_choice(args)
    template = Template.build(args.image, args.mask, args.landmarks, labels=labels, label_names=names,
                              n_positive=args.positive, n_negative=args.negative,
                              window=tuple(args.window) if args.window else None, slice_index=args.slice,
                              frame=args.frame)
    note = template.image.meta.get("frame_note")
    if note:
        print(f"medshot: note: {args.image}: {note}", file=sys.stderr)
    out = Path(args.out)
    refuse_input_overwrite(out, [args.image, args.mask, args.landmarks])
    template.save(out)
    print(f"wrote {out}: {describe(template)}")
    return 0


def describe(template) -> str:
    """One line: (a volume's size and spacing,) landmarks, labels and prompt points of a template."""
    image = template.image
    what = ""
    if image.ndim == 3:
        shape = image.source.shape if image.source is not None else image.shape
        what = f"volume {'x'.join(map(str, shape))} @ {'x'.join(f'{s:.3g}' for s in image.spacing)} mm, "
    n_prompts = sum(len(p.positive) + len(p.negative) for p in template.prompts)
    return f"{what}{len(template.landmarks)} landmarks, {len(template.labels)} labels, {n_prompts} prompt points"


def label_choice(args: argparse.Namespace) -> tuple[list[int] | None, dict[int, str] | None]:
    """``--labels`` and ``--label-names`` of the template command, parsed."""
    from ..data.annotations import read_label_names

    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError as exc:
            raise MedshotError(f"--labels must be comma-separated integers, got '{args.labels}'") from exc
    return labels, (read_label_names(args.label_names) if args.label_names else None)


def refuse_input_overwrite(out: Path, inputs) -> None:
    for i in inputs:
        if i is not None and Path(i).exists() and Path(i).resolve() == out.resolve():
            raise MedshotError("refusing to overwrite an input file; choose another --out", out)


COMMANDS = {"template": cmd_template}
