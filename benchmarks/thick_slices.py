"""Make a thick-slice copy of a volume dataset: every image and label map resampled to a given voxel size.

Clinical MR and many CTs come as thin pixels on thick slices (e.g. 1.25 x 1.25 x 7.7 mm); the
development volumes do not. This writes such a copy (SimpleITK, same origin and direction, linear for
images and nearest for labels), in the folder layout ``benchmarks/evaldata_3d.py`` reads, so the
method can be measured on that geometry beside the native one::

    python benchmarks/thick_slices.py --spacing 1.25 1.25 7.7 --out /tmp/thick
    python benchmarks/evaldata_3d.py --data /tmp/thick --tasks openkbp --split report --templates 3 \\
        --methods medshot --out /tmp/thick_report

Landmark CSVs are not copied (their voxel indices would not hold on the new grid). ``--self CASE``
then makes a template of that case of the copy and segments the same volume with it, printing each
label's Dice and score (a template must give itself back)::

    python benchmarks/thick_slices.py --out /tmp/thick --self pt_1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_3d import DEFAULT_DATA, TASKS  # noqa: E402


def resample(path: Path, spacing: tuple[float, ...], label: bool, out: Path) -> None:
    image = sitk.ReadImage(str(path))
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    result = sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing,
                           image.GetDirection(), 0, image.GetPixelID())
    sitk.WriteImage(result, str(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)))
    p.add_argument("--spacing", type=float, nargs=3, default=(1.25, 1.25, 7.7), metavar=("X", "Y", "Z"),
                   help="voxel size in mm along the files' own axes (default 1.25 1.25 7.7)")
    p.add_argument("--tasks", default="openkbp")
    p.add_argument("--out", required=True, help="folder of the copy (never inside the repository)")
    p.add_argument("--self", dest="self_case", default=None, metavar="CASE",
                   help="then segment this case of the copy with a template made of it")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"evaldata not found at {data}; skipping")
        return 0
    for task in args.tasks.split(","):
        source = data / TASKS[task]["folder"]
        for sub in ("images", "labels"):
            target = out / TASKS[task]["folder"] / sub
            target.mkdir(parents=True, exist_ok=True)
            for f in sorted((source / sub).glob("*.nii.gz")):
                resample(f, tuple(args.spacing), sub == "labels", target / f.name)
        for extra in source.parent.glob("label_names.csv"):
            shutil.copy(extra, out / TASKS[task]["folder"].split("/")[0] / extra.name)
        print(f"{task}: {source} -> {out / TASKS[task]['folder']} at {args.spacing} mm")
        if args.self_case:
            segment_itself(out / TASKS[task]["folder"], args.self_case, TASKS[task]["window"])
    return 0


def segment_itself(folder: Path, case: str, window) -> None:
    """Dice and score per label of a template made of ``case`` run on the same volume."""
    import numpy as np

    import medshot
    from medshot.data.template import Template
    from medshot.evaluation.metrics import dice

    template = Template.build(folder / "images" / f"{case}.nii.gz", folder / "labels" / f"{case}.nii.gz",
                              window=window)
    result = medshot.OneShot(template).segment(template.image)
    for label in sorted(template.labels):
        print(f"{case} on itself, label {label}: Dice {dice(result.label_map == label, template.mask == label):.3f}, "
              f"score {result.scores[label]:.3f} ({'ok' if result.scores[label] >= 0.5 else 'low_confidence'})")
    print(f"shape {template.image.shape}, spacing {np.round(template.image.spacing, 3).tolist()} mm")


if __name__ == "__main__":
    raise SystemExit(main())
