"""The pre-issue-9 method (commit 7476fec) on the same leave-one-out pairs as ``evaldata_2d.py``.

That commit's ``OneShot`` cannot be imported beside today's package, so this script runs in two
steps: today's medshot lists each task's cases of the chosen half (``--split``, as in
``evaldata_2d.py``), then a subprocess with the old checkout first on ``sys.path`` runs its
``OneShot`` on every pair and prints one markdown row per task: mean Dice (per target the mean over
the labels in either mask) or, for the cephalograms, the median over pairs of the per-pair median
NED, and the spread over templates. Usage::

    git worktree add /tmp/old9 7476fec
    python benchmarks/old_method_2d.py --old-checkout /tmp/old9 --split report
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

OLD_RUNNER = r'''
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import medshot
from medshot.io import load_label_map
from PIL import Image

def dice(p, t):
    s = p.sum() + t.sum()
    return 1.0 if s == 0 else 2 * np.logical_and(p, t).sum() / s

for task, spec in json.load(open(sys.argv[2])).items():
    cases, per_template = spec["cases"], []
    for t in cases:
        if spec["landmarks_csv"]:
            template = medshot.Template.build(t["image"], landmarks_csv=spec["landmarks_csv"])
        else:
            template = medshot.Template.build(t["image"], t["mask"])
        shot, values = medshot.OneShot(template), []
        for g in cases:
            if g is t:
                continue
            r = shot.run(g["image"], landmarks=bool(spec["landmarks_csv"]), masks=not spec["landmarks_csv"])
            if spec["landmarks_csv"]:
                H, W = np.asarray(Image.open(g["image"])).shape[:2]
                values.append(float(np.median([np.hypot(lm.x - g["landmarks"][lm.name][0],
                                                        lm.y - g["landmarks"][lm.name][1]) / np.hypot(H, W)
                                               for lm in r.landmarks])))
            else:
                truth = load_label_map(g["mask"], r.label_map.shape)
                labels = sorted((set(np.unique(r.label_map).tolist()) | set(np.unique(truth).tolist())) - {0})
                values.append(float(np.mean([dice(r.label_map == k, truth == k) for k in labels])) if labels else 1.0)
        per_template.append(values)
    every = [v for vs in per_template for v in vs]
    stat = np.median if spec["landmarks_csv"] else np.mean
    spread = sorted((stat(vs) for vs in per_template), reverse=bool(spec["landmarks_csv"]))  # worst first
    what = "median NED" if spec["landmarks_csv"] else "mean Dice"
    print(f"| {task} | 7476fec | {len(every)} | {what} {stat(every):.4f} | "
          f"{spread[0]:.4f} / {np.median(spread):.4f} / {spread[-1]:.4f} |", flush=True)
'''


def main(argv: list[str] | None = None) -> int:
    from evaldata_2d import DEFAULT_DATA, TASKS

    from medshot.evaluation.dataset import discover_dataset
    from medshot.evaluation.plan import split_cases

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-checkout", required=True, help="a checkout of commit 7476fec (git worktree add DIR 7476fec)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--split", choices=["tune", "report", "all"], default="report")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; nothing to do")
        return 0
    plan = {}
    for task, folder in TASKS.items():
        dataset = discover_dataset(data / folder)
        names = split_cases(dataset.names, args.split)
        cases = []
        for name in names:
            case = dataset.case(name)
            # the old API's landmarks are (x, y) = (column, row)
            cases.append({"image": str(case.image), "mask": str(case.mask) if case.mask else None,
                          "landmarks": {lm.name: [float(lm.point[1]), float(lm.point[0])] for lm in case.landmarks}})
        landmarks = data / folder / "landmarks.csv"
        plan[task] = {"cases": cases, "landmarks_csv": str(landmarks) if landmarks.exists() else None}
    print(f"`python benchmarks/old_method_2d.py --old-checkout {args.old_checkout} --split {args.split}`\n")
    print("| task | method | pairs | value | template worst / median / best |\n|---|---|---:|---|---|", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as fh:
        json.dump(plan, fh)
        fh.flush()
        return subprocess.run([sys.executable, "-c", OLD_RUNNER, str(Path(args.old_checkout).resolve()), fh.name],
                              cwd=tempfile.gettempdir()).returncode


if __name__ == "__main__":
    raise SystemExit(main())
