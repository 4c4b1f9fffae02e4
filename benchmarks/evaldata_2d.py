"""Benchmark: ``medshot evaluate`` on every 2D task of the shared evaldata, leave-one-out, on one half of the subjects.

Protocol (issue 9): every case of the chosen half is the template in turn and every other case of
the same half is a target (``--templates all --split tune|report``). The halves deal each task's
cases, sorted by name, alternately (one case per subject in these tasks): parameters are chosen on
``tune`` and reported on ``report``. medshot (classical backbone and segmenter, plus any backbone
or segmenter asked for whose weights are present) and the identity, affine, demons, B-spline and,
when ``antspyx`` is installed, ANTs SyN registration baselines run on the same pairs in the same run.

Per task and method the table gives

- **Dice**: per target the mean over the labels in either mask (a label predicted where the truth
  has none, or missed, counts 0), then the mean over all pairs;
- **worst / median / best template**: the same mean per template, then its minimum, median and
  maximum over the templates (the spread that depends on which image was annotated);
- **AUC**: how well medshot's per-label ``score`` separates labels with Dice < 0.5 from the others
  (ROC AUC; 0.5 = chance), and how many of the pairs' labels fall below 0.5;
- for landmark tasks the median normalised landmark distance (NED) and its spread over templates;
- seconds per target and the ratio B-spline seconds / method seconds, measured in the same run.

Usage::

    python benchmarks/evaldata_2d.py --split report --out /tmp/bench2d > table.md

Skips (exit 0, one message) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from medshot import MedshotError
from medshot.evaluation.metrics import failure_auc
from medshot.evaluation.plan import parse_list
from medshot.evaluation.run import EvaluationConfig, run_evaluation

TASKS = {
    "hc18": "us_fetal_head_hc18",
    "hippocampus": "mr_hippocampus_msd/slices2d",
    "openkbp_axial": "ct_headneck_oar_openkbp/slices2d_axial",
    "openkbp_sagittal": "ct_headneck_oar_openkbp/slices2d_sagittal",
    "acdc": "cardiac_mri_sax_acdc",
    "drishti": "fundus_opticdisc_cup_drishtigs",
    "ceph": "xray_ceph_landmarks_hamedan",
}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"
BASELINES = "identity,affine,demons,bspline,syn"


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of the score against failures (``positive``: Dice < 0.5); see ``failure_auc``."""
    return failure_auc(scores, positive)


def target_dice(rows: list[dict]) -> dict[tuple[str, str, str], float]:
    """(method, template, target) -> mean Dice over the labels present in the prediction or the truth."""
    per: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["kind"] != "label" or r["dice"] == "":
            continue
        d = float(r["dice"])
        if r["in_truth"] == "1" or d < 1.0:  # absent from both -> Dice 1 by convention: not "in either mask"
            per[(r["method"], r["template"], r["target"])].append(d)
    return {k: float(np.mean(v)) for k, v in per.items()}


def spread(values: dict[tuple[str, str, str], float], method: str, reduce=np.mean) -> tuple[float, float, float]:
    by_template: dict[str, list[float]] = defaultdict(list)
    for (m, t, _), v in values.items():
        if m == method:
            by_template[t].append(v)
    means = [float(reduce(v)) for v in by_template.values()]
    if not means:
        return (float("nan"),) * 3  # type: ignore[return-value]
    return float(np.min(means)), float(np.median(means)), float(np.max(means))


def task_rows(task: str, out: Path) -> list[dict]:
    """One table line per method of a finished task report."""
    rows = _read(out / "cases.csv")
    timing = {r["method"]: r for r in _read(out / "timing.csv")}
    # every case of a method, failed ones included (timing.csv times only those that finished)
    cases = {r["method"]: r for r in _read(out / "methods.csv") if r["status"] == "run"}
    bspline = float(timing["bspline"]["seconds_mean"]) if "bspline" in timing else None
    per_target = target_dice(rows)
    ned: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "landmark" and r["ned"] != "":
            ned[(r["method"], r["template"], r["target"])].append(float(r["ned"]))
    lines = []
    for method, t in timing.items():
        seconds = float(t["seconds_mean"])
        ran = cases.get(method, {"cases": t["cases"], "failed": "0"})
        pairs = ran["cases"] + (f" ({ran['failed']} failed)" if ran["failed"] not in ("", "0") else "")
        line = {"task": task, "method": method, "pairs": pairs, "dice": "", "spread": "", "auc": "",
                "ned": "", "ned_spread": "", "seconds": f"{seconds:.3f}",
                "ratio": f"{bspline / seconds:.2f}" if bspline and seconds > 0 else ""}
        values = [v for (m, _, _), v in per_target.items() if m == method]
        if values:
            line["dice"] = f"{np.mean(values):.3f}"
            line["spread"] = " / ".join(f"{v:.3f}" for v in spread(per_target, method))
            labels = [r for r in rows if r["method"] == method and r["kind"] == "label" and r["score"] != ""
                      and (r["in_truth"] == "1" or float(r["dice"]) < 1.0)]
            if labels:
                fail = np.array([float(r["dice"]) < 0.5 for r in labels])
                auc = roc_auc(np.array([float(r["score"]) for r in labels]), fail)
                line["auc"] = f"{auc:.2f} ({fail.sum()}/{len(fail)} < 0.5)"
        errors = {k: v for k, v in ned.items() if k[0] == method}
        if errors:
            line["ned"] = f"{np.median(np.concatenate(list(errors.values()))):.4f}"
            flat = {k: float(np.median(v)) for k, v in errors.items()}
            line["ned_spread"] = " / ".join(f"{v:.4f}" for v in spread(flat, method, np.median)[::-1])
        lines.append(line)
    return lines


def markdown(lines: list[dict]) -> str:
    out = ["| task | method | pairs | mean Dice | template worst / median / best | score AUC (Dice<0.5) | "
           "median NED | template worst / median / best NED | s / target | B-spline s ÷ method s |",
           "|---|---|---:|---:|---|---|---:|---|---:|---:|"]
    out += [f"| {r['task']} | {r['method']} | {r['pairs']} | {r['dice']} | {r['spread']} | {r['auc']} | {r['ned']} | "
            f"{r['ned_spread']} | {r['seconds']} | {r['ratio']} |" for r in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)),
                   help="evaldata folder (default: $MEDSHOT_EVALDATA or ../shared/evaldata)")
    p.add_argument("--out", default="/tmp/medshot-evaldata-2d", help="folder for the per-task reports")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}")
    p.add_argument("--split", choices=["tune", "report", "all"], default="report",
                   help="which half of each task's subjects (default: report)")
    p.add_argument("--templates", default="all", help="all (leave-one-out, default) | first | K")
    p.add_argument("--max-targets", type=int, default=None, help="at most N targets per template (quick runs)")
    p.add_argument("--backbones", default="classical", help="medshot backbones (default: classical)")
    p.add_argument("--segmenters", default="classical", help="medshot segmenters (default: classical)")
    p.add_argument("--baselines", default=BASELINES, help=f"default: {BASELINES} (syn only with antspyx)")
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
            segmenters=parse_list(args.segmenters), baselines=parse_list(args.baselines), templates=args.templates,
            template_choice="first", split=args.split, max_targets=args.max_targets, work_size=args.work_size,
            restart=args.restart, progress=not args.quiet,
        )
        print(f"[{task}] evaluating {folder} ({args.split} half)", file=sys.stderr)
        try:
            result = run_evaluation(config)
        except MedshotError as exc:
            print(f"medshot: error: {exc}", file=sys.stderr)
            return 2
        skipped.update(f"{s.what} {s.name}: {s.reason}" for s in result.skipped)
        lines += task_rows(task, result.out)
    command = "python benchmarks/evaldata_2d.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"`{command.strip()}` — {args.split} half, templates: {args.templates} (each in turn), targets: the "
          "other cases of the same half" + (f" (at most {args.max_targets} per template)" if args.max_targets else "")
          + f"; work size {args.work_size}; {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - start:.0f} s in all (resumed cases keep their first timing)\n")
    print(markdown(lines))
    for s in sorted(skipped):
        print(f"\nskipped {s}")
    print(f"\nPer-task reports: {args.out}/<task>/report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
