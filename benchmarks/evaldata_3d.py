"""3D benchmark: ``medshot evaluate`` on the evaldata volumes (medshot vs SimpleITK atlas registration).

For each task the first case (sorted by name; or ``--templates all|K``) is the template -- its
expert label map, and its labels' centroids (``volumes/*centroids*voxel.csv``) as landmarks -- and
the other cases are targets. Every method carries the same template to the same targets; per task
and method the table gives Dice per label, the mean Dice (per target over the labels its truth
holds, then over targets), the landmark error in mm (template label centroids carried to the
target vs the target's own label centroids, both from expert masks; mean and median over all
landmarks of all targets) and seconds per volume. Everything comes from the per-task reports
``<out>/<task>/`` (cases.csv, summary.csv, report.html), which a rerun resumes.

Methods: ``medshot`` (the default: weights-free descriptors, the carried label map: segmenter
``classical``), ``medshot-rw`` (a random walker around each carried structure: segmenter
``randomwalker``), and the baselines ``identity``, ``affine``, ``demons``, ``bspline`` (SimpleITK
Mattes-MI affine of the whole volumes, then demons or a B-spline FFD) and ``syn`` (ANTs, optional).

Usage::

    python benchmarks/evaldata_3d.py --max-pairs 4                 # quick
    python benchmarks/evaldata_3d.py --tasks hippocampus --max-pairs 14
    python benchmarks/evaldata_3d.py --large                       # = benchmarks/memory_3d.py: peak RSS, 512x512x300 CT

Skips cleanly (exit 0, one line) when the evaldata folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from medshot import MedshotError
from medshot.evaluation.plan import parse_list
from medshot.evaluation.run import EvaluationConfig, run_evaluation

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"
TASKS = {
    "hippocampus": {"folder": "mr_hippocampus_msd/volumes", "window": None},
    "openkbp": {"folder": "ct_headneck_oar_openkbp/volumes", "window": (-160.0, 240.0)},
}
# benchmark method -> (segmenter, baseline); medshot methods appear as medshot:classical/<segmenter> in the reports
METHODS = {"medshot": ("classical", None), "medshot-rw": ("randomwalker", None),
           **{name: (None, name) for name in ("identity", "affine", "demons", "bspline", "syn")}}


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def report_name(method: str) -> str:
    segmenter, baseline = METHODS[method]
    return baseline or f"medshot:classical/{segmenter}"


def task_table(task: str, out: Path, methods: list[str]) -> list[str]:
    """Markdown lines of one task's table, from its report folder."""
    rows = _read(out / "cases.csv")
    timing = {r["method"]: r for r in _read(out / "timing.csv")}
    labels = sorted({int(r["item"]) for r in rows if r["kind"] == "label"})
    targets = sorted({r["target"] for r in rows})
    templates = sorted({r["template"] for r in rows})
    lines = [f"\n**{task}** (template {', '.join(templates)}, {len(targets)} targets; mean over pairs)\n"]
    head = ["method"] + [f"Dice {k}" for k in labels] + ["mean Dice", "landmark mm (mean)", "landmark mm (median)",
                                                          "s / volume"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        name = report_name(method)
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        per_label = defaultdict(list)
        per_pair = defaultdict(list)
        for r in mine:
            if r["kind"] == "label" and r["in_truth"] == "1":
                per_label[int(r["item"])].append(float(r["dice"]))
                per_pair[(r["template"], r["target"])].append(float(r["dice"]))
        lm = [float(r["distance_mm"]) for r in mine if r["kind"] == "landmark" and r["distance_mm"] != ""]
        cells = [method] + [f"{np.mean(per_label[k]):.3f}" if per_label[k] else "-" for k in labels] + [
            f"{np.mean([np.mean(v) for v in per_pair.values()]):.3f}" if per_pair else "-",
            f"{np.mean(lm):.1f}" if lm else "-", f"{np.median(lm):.1f}" if lm else "-",
            f"{float(timing[name]['seconds_mean']):.1f}" if name in timing else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)),
                   help="evaldata folder (default: $MEDSHOT_EVALDATA or ../shared/evaldata)")
    p.add_argument("--out", default="/tmp/medshot-evaldata-3d", help="folder for the per-task reports")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}")
    p.add_argument("--methods", default="medshot,medshot-rw,affine,bspline",
                   help=f"comma-separated from {', '.join(METHODS)} (default: the first four)")
    p.add_argument("--max-pairs", type=int, default=None, help="at most N targets per template (quick runs)")
    p.add_argument("--templates", default="first", help="first (default) | all (leave-one-out) | K")
    p.add_argument("--split", choices=["all", "tune", "report"], default="all",
                   help="which half of each task's subjects (default: all)")
    p.add_argument("--restart", action="store_true", help="discard earlier per-task reports instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--large", action="store_true", help="measure peak RSS on a synthetic 512x512x300 CT instead "
                   "(benchmarks/memory_3d.py)")
    args = p.parse_args(argv)
    if args.large:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from memory_3d import run_large

        return run_large()
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; skipping (pass --data or set MEDSHOT_EVALDATA)")
        return 0
    methods = parse_list(args.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    tasks = parse_list(args.tasks)
    if [t for t in tasks if t not in TASKS]:
        p.error(f"unknown task(s) {', '.join(t for t in tasks if t not in TASKS)}; known: {', '.join(TASKS)}")
    segmenters = [METHODS[m][0] for m in methods if METHODS[m][0]]
    baselines = [METHODS[m][1] for m in methods if METHODS[m][1]]
    lines: list[str] = []
    for task in tasks:
        folder = data / TASKS[task]["folder"]
        if not folder.is_dir():
            print(f"<!-- {task}: {folder} absent, skipped -->")
            continue
        config = EvaluationConfig(
            data=folder, out=Path(args.out) / task, backbones=["classical"] if segmenters else [],
            segmenters=segmenters or ["classical"], baselines=baselines, templates=args.templates,
            template_choice="first", split=args.split, max_targets=args.max_pairs, window=TASKS[task]["window"],
            restart=args.restart, progress=not args.quiet,
        )
        print(f"[{task}] evaluating {folder}", file=sys.stderr)
        try:
            result = run_evaluation(config)
        except MedshotError as exc:
            print(f"medshot: error: {exc}", file=sys.stderr)
            return 2
        lines += task_table(task, result.out, methods)
    print("\n".join(lines))
    print(f"\nPer-task reports: {args.out}/<task>/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
