"""Benchmark: ``medshot evaluate`` on every 2D task of the shared evaldata, as one markdown table.

Each task is evaluated with the first three images (sorted by name) in turn as template and all
the other images as targets (``--templates 3 --template-choice first``), for medshot (classical
backbone and segmenter, plus any backbone/segmenter asked for whose weights are present) and the
identity, affine and B-spline atlas-registration baselines on the same pairs. The table gives the
mean Dice (all labels pooled) per segmentation task, the median normalised landmark error (NED) per
landmark task, the seconds per target and the B-spline-to-method time ratio, all measured in the
same run. Per-task reports (cases.csv, summary.csv, report.html) stay under ``--out``; a rerun
resumes them (``--restart`` starts over).

Usage::

    python benchmarks/evaldata_2d.py [--data ../shared/evaldata] [--max-targets N] > evaldata_2d.md

Skips (exit 0, one message) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

from medshot.errors import MedshotError
from medshot.experiment import EvaluationConfig, parse_list, run_evaluation

TASKS = {
    "hc18": "us_fetal_head_hc18",
    "hippocampus": "mr_hippocampus_msd/slices2d",
    "openkbp_axial": "ct_headneck_oar_openkbp/slices2d_axial",
    "openkbp_sagittal": "ct_headneck_oar_openkbp/slices2d_sagittal",
    "ceph": "xray_ceph_landmarks_hamedan",
}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def task_rows(task: str, out: Path) -> list[dict]:
    """One table line per method of a finished task report."""
    summary = {(r["metric"], r["method"]): r for r in _read(out / "summary.csv") if r["item"] == "all"}
    timing = {r["method"]: r for r in _read(out / "timing.csv")}
    bspline = float(timing["bspline"]["seconds_mean"]) if "bspline" in timing else None
    lines = []
    for method, t in timing.items():
        seconds = float(t["seconds_mean"])
        dice = summary.get(("dice", method))
        ned = summary.get(("ned", method))
        lines.append({
            "task": task, "method": method, "cases": t["cases"],
            "dice": f"{float(dice['mean']):.3f}" if dice else "",
            "ned": f"{float(ned['median']):.4f}" if ned else "",
            "seconds": f"{seconds:.2f}",
            "ratio": f"{bspline / seconds:.2f}" if bspline and seconds > 0 else "",
        })
    return lines


def markdown(lines: list[dict]) -> str:
    out = ["| task | method | pairs | mean Dice | median NED | s / target | bspline s ÷ method s |",
           "|---|---|---:|---:|---:|---:|---:|"]
    out += [f"| {r['task']} | {r['method']} | {r['cases']} | {r['dice']} | {r['ned']} | {r['seconds']} | "
            f"{r['ratio']} |" for r in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)),
                   help="evaldata folder (default: $MEDSHOT_EVALDATA or ../shared/evaldata)")
    p.add_argument("--out", default="/tmp/medshot-evaldata-2d", help="folder for the per-task reports")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}")
    p.add_argument("--max-targets", type=int, default=None, help="at most N targets per template (quick runs)")
    p.add_argument("--backbones", default="classical", help="medshot backbones (default: classical)")
    p.add_argument("--segmenters", default="classical", help="medshot segmenters (default: classical)")
    p.add_argument("--baselines", default="identity,affine,bspline")
    p.add_argument("--work-size", type=int, default=256)
    p.add_argument("--restart", action="store_true", help="discard earlier per-task reports instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; skipping (pass --data or set MEDSHOT_EVALDATA)")
        return 0
    tasks = parse_list(args.tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    lines, skipped = [], set()
    start = time.perf_counter()
    for task in tasks:
        folder = data / TASKS[task]
        if not folder.is_dir():
            print(f"<!-- {task}: {folder} absent, skipped -->")
            continue
        config = EvaluationConfig(
            data=folder, out=Path(args.out) / task, backbones=parse_list(args.backbones),
            segmenters=parse_list(args.segmenters), baselines=parse_list(args.baselines), templates="3",
            template_choice="first", max_targets=args.max_targets, work_size=args.work_size, restart=args.restart,
            progress=not args.quiet,
        )
        print(f"[{task}] evaluating {folder}", file=sys.stderr)
        try:
            result = run_evaluation(config)
        except MedshotError as exc:
            print(f"medshot: error: {exc}", file=sys.stderr)
            return 2
        skipped.update(f"{s.what} {s.name}: {s.reason}" for s in result.skipped)
        lines += task_rows(task, result.out)
    command = "python benchmarks/evaldata_2d.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"`{command.strip()}` — templates: first 3 images in turn, targets: all others"
          + (f" (at most {args.max_targets} per template)" if args.max_targets else "")
          + f"; work size {args.work_size}; {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - start:.0f} s in all (resumed cases keep their first timing)\n")
    print(markdown(lines))
    for s in sorted(skipped):
        print(f"\nskipped {s}")
    print(f"\nPer-task reports: {args.out}/<task>/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
