"""Fit the logistic models behind medshot's label scores and landmark confidences, on the tune half only.

Runs the default method leave-one-out on the tune half of every 2D task (every tune-half case the
template in turn, the other tune-half cases targets), records each label's and landmark's
evidence (:mod:`medshot.evidence`) with its true Dice or distance, fits an L2-penalised logistic
regression per kind (label: Dice >= 0.5; landmark: distance <= 2 % of the diagonal) with tasks
weighted equally, and prints the model as Python to paste into ``medshot/confidence.py`` together
with its ROC AUC on the tune half. The report half is never read: its AUC comes from
``evaldata_2d.py --split report``.

Usage::

    python benchmarks/calibrate_score.py --out /tmp/calibrate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

import medshot
from medshot.confidence import LabelEvidence, LandmarkEvidence, features, fit_logistic
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.metrics import dice, normalized_distance
from medshot.evaluation.plan import split_cases
from medshot.evaluation.runners.image2d import make_template
from medshot.io import load_label_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS, roc_auc  # noqa: E402

LANDMARK_BAR = 0.02  # a landmark counts as right within 2 % of the image diagonal


def collect(task: str, data: Path, cache: dict) -> None:
    dataset = discover_dataset(data / TASKS[task])
    names = split_cases(dataset.names, "tune")
    for t_name in names:
        pending = [g for g in names if g != t_name and f"{task}|{t_name}|{g}" not in cache]
        if not pending:
            continue
        shot = medshot.OneShot(make_template(dataset.case(t_name), dataset.label_names))
        for g_name in pending:
            target = dataset.case(g_name)
            result = shot.run(target.image, landmarks=dataset.has_landmarks, masks=dataset.has_masks)
            rows = []
            if dataset.has_masks:
                truth = load_label_map(target.mask, target.shape)
                for label, e in result.evidence.items():
                    if isinstance(e, LabelEvidence):
                        rows.append({"kind": "label", "ok": dice(result.label_map == label, truth == label) >= 0.5,
                                     **features(e)})
            if dataset.has_landmarks:
                true = {lm.name: (lm.x, lm.y) for lm in target.landmarks}
                for lm in result.landmarks:
                    e = result.evidence.get(lm.name)
                    if isinstance(e, LandmarkEvidence) and lm.name in true:
                        ned = float(normalized_distance(np.array([lm.x, lm.y]), np.array(true[lm.name]),
                                                        target.shape))
                        rows.append({"kind": "landmark", "ok": ned <= LANDMARK_BAR, **features(e)})
            cache[f"{task}|{t_name}|{g_name}"] = rows


def fit(rows: list[dict], names: list[str], tasks: list[str], l2: float) -> tuple[dict, float]:
    X = np.array([[r[k] for k in names] for r in rows], float)
    y = np.array([r["ok"] for r in rows], float)
    # Tasks count equally, however many labels or pairs each has.
    counts = {t: sum(1 for tt in tasks if tt == t) for t in set(tasks)}
    weight = np.array([len(rows) / (len(counts) * counts[t]) for t in tasks])
    mean, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mean) / sd
    coef, intercept = fit_logistic(Z, y, weight, l2)
    model = {"mean": dict(zip(names, np.round(mean, 5).tolist())), "sd": dict(zip(names, np.round(sd, 5).tolist())),
             "coef": dict(zip(names, np.round(coef, 4).tolist())), "intercept": round(intercept, 4)}
    p = 1 / (1 + np.exp(-(Z @ coef + intercept)))
    return model, roc_auc(p, y < 0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)))
    p.add_argument("--out", default="/tmp/medshot-calibrate")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--l2", type=float, default=1.0)
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; skipping")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "evidence.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        for task in tasks:
            print(f"[{task}] tune half", file=sys.stderr, flush=True)
            collect(task, data, cache)
            cache_path.write_text(json.dumps(cache))
    finally:
        cache_path.write_text(json.dumps(cache))
    for kind, cls, name in (("label", LabelEvidence, "LABEL_MODEL"), ("landmark", LandmarkEvidence, "LANDMARK_MODEL")):
        rows, row_tasks = [], []
        for key, recs in cache.items():
            if key.split("|")[0] in tasks:
                for r in recs:
                    if r["kind"] == kind:
                        rows.append(r)
                        row_tasks.append(key.split("|")[0])
        if not rows:
            continue
        model, auc = fit(rows, [f.name for f in fields(cls)], row_tasks, args.l2)
        ok = np.mean([r["ok"] for r in rows])
        print(f"# {kind}: {len(rows)} samples from {len(set(row_tasks))} tasks (tune half), {ok:.1%} right; "
              f"tune-half ROC AUC {auc:.3f}")
        print(f"{name} = {json.dumps(model, indent=4)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
