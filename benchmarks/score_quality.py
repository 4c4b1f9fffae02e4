"""Are medshot's scores right? Per task, from ``medshot evaluate`` reports: AUC, ECE, confident misses, NED.

Reads the ``cases.csv`` of each task folder written by ``benchmarks/evaldata_2d.py`` or
``benchmarks/evaldata_3d.py`` (one folder per run, e.g. the code before and after a change, run on
the same pairs) and prints, for medshot's default method:

- label score ROC AUC against Dice < 0.5 and its expected calibration error (ECE, 10 bins);
- how many labels with Dice < 0.3 still say ``ok`` (score >= 0.5): the confident wrong answers;
- landmark confidence AUC and ECE (right: NED <= 0.02) and the median NED.

A case that failed scores 0 (its rows say so). Usage::

    python benchmarks/score_quality.py /tmp/before /tmp/after [--method classical]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from medshot.evaluation.metrics import expected_calibration_error, failure_auc


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def quality(cases: Path, method: str | None) -> dict:
    with open(cases, newline="") as fh:
        rows = list(csv.DictReader(fh))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if not m.startswith("baseline")]
    method = method if method in methods else (methods[0] if methods else None)
    rows = [r for r in rows if r["method"] == method]
    out: dict = {"method": method}
    labels = [r for r in rows if r["kind"] == "label" and r.get("in_truth", "1") == "1"]
    if labels:
        dice = np.array([_float(r["dice"]) for r in labels])
        score = np.array([0.0 if r.get("status") == "failed" else _float(r["score"]) for r in labels])
        out.update(labels=len(labels), misses=int((dice < 0.5).sum()), label_auc=failure_auc(score, dice < 0.5),
                   label_ece=expected_calibration_error(score, dice >= 0.5),
                   confident_misses=int(np.sum((dice < 0.3) & (score >= 0.5))), mean_dice=float(np.mean(dice)))
    points = [r for r in rows if r["kind"] == "landmark"]
    if points:
        ned = np.array([_float(r["ned"]) for r in points])
        conf = np.array([0.0 if r.get("status") == "failed" else _float(r["score"]) for r in points])
        out.update(landmarks=len(points), median_ned=float(np.median(ned)),
                   landmark_auc=failure_auc(conf, ned > 0.02),
                   landmark_ece=expected_calibration_error(conf, ned <= 0.02),
                   flagged_good=int(np.sum((ned <= 0.02) & (conf < 0.5))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="benchmark output folders (one sub-folder per task)")
    p.add_argument("--method", default=None, help="method name in cases.csv (default: the first non-baseline)")
    args = p.parse_args(argv)
    print("| task | run | labels (Dice<0.5) | mean Dice | label AUC | label ECE | Dice<0.3 but ok | landmarks | "
          "median NED | landmark AUC | landmark ECE | NED<=0.02 but flagged |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    tasks = sorted({c.parent.name for run in args.runs for c in run.glob("*/cases.csv")})
    for run in args.runs:  # every task's rows together
        pooled = run / ".pooled.csv"
        lines = [open(c).read().splitlines() for c in sorted(run.glob("*/cases.csv"))]
        if lines:
            header = lines[0][0]
            rows = [ln for f in lines if f and f[0] == header for ln in f[1:]]
            pooled.write_text("\n".join([header, *rows]) + "\n")
    for task in [*tasks, "all tasks"]:
        for run in args.runs:
            cases = run / ".pooled.csv" if task == "all tasks" else run / task / "cases.csv"
            if not cases.exists():
                continue
            q = quality(cases, args.method)

            def f(key, digits=3, q=q):
                v = q.get(key, "")
                return "" if v == "" else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

            print(f"| {task} | {run.name} | {f('labels')} ({f('misses')}) | {f('mean_dice')} | {f('label_auc', 2)} | "
                  f"{f('label_ece')} | {f('confident_misses')} | {f('landmarks')} | {f('median_ned', 4)} | "
                  f"{f('landmark_auc', 2)} | {f('landmark_ece')} | {f('flagged_good')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
