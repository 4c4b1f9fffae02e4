"""Fit the logistic models behind medshot's label scores and landmark confidences, on the tune half only.

Runs the default method leave-one-out on the tune half of every 2D task (every tune-half case the
template in turn, the other tune-half cases targets) and of the volume tasks (a few tune-half templates
each), records each label's and landmark's
evidence (:mod:`medshot.pipeline.evidence`) with its true Dice or distance, fits an L2-penalised logistic
regression per kind and dimension (label: Dice >= 0.5; landmark: distance <= 2 % of the diagonal;
templates with a mask also carry their labels' centroids as landmarks) with tasks weighted equally,
and prints the model as Python to paste into ``medshot/pipeline/confidence.py`` together
with its ROC AUC on the tune half. The report half is never read: its AUC comes from
``evaldata_2d.py --split report``.

Usage::

    python benchmarks/calibrate_score.py --out /tmp/calibrate
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from scipy import ndimage

import medshot
from medshot.data.annotations import Landmark
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.metrics import dice, expected_calibration_error, normalized_distance
from medshot.evaluation.plan import split_cases
from medshot.evaluation.runner import Runner
from medshot.pipeline.confidence import (
    LABEL_FEATURES,
    LANDMARK_FEATURES,
    LANDMARK_FEATURES_3D,
    LabelEvidence,
    LandmarkEvidence,
    features,
    fit_logistic,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS, roc_auc  # noqa: E402

LANDMARK_BAR = 0.02  # a landmark counts as right within 2 % of the image diagonal
SD_FLOOR = 0.05
ABSENT_PER_TEMPLATE = 2  # negative controls per template (images of other tasks of the same dimension)
# Volume tasks: folder and CT window (as benchmarks/evaldata_3d.py). Volumes cost 10-30 s a pair, so a few
# tune-half templates each (--volume-templates) calibrate their model.
VOLUME_TASKS = {"hippocampus_3d": ("mr_hippocampus_msd/volumes", None),
                "openkbp_3d": ("ct_headneck_oar_openkbp/volumes", (-160.0, 240.0))}
ALL_TASKS = {**{t: (f, None) for t, f in TASKS.items()}, **VOLUME_TASKS}


def _centroids(label_map: np.ndarray) -> dict[str, np.ndarray]:
    """Derived landmarks: each label's centroid (array indices), as the evaldata's centroid CSVs define them."""
    return {f"centroid {v}": np.array(ndimage.center_of_mass(label_map == v))
            for v in np.unique(label_map) if v != 0}


def collect(task: str, data: Path, cache: dict, tasks: list[str], volume_templates: int) -> None:
    """Evidence and truth for the tune-half pairs of ``task``, plus negative controls.

    A negative control pairs a template with a tune-half image of *another* task of the same dimension:
    the structure is absent there, so every label and landmark found in it is wrong. Without such pairs
    the model would never see what an absent structure looks like. Templates with a mask also carry
    their labels' centroids as landmarks (derived landmarks), so landmark confidence is fitted on every
    task, not on the cephalograms alone.
    """
    folder, window = ALL_TASKS[task]
    dataset = discover_dataset(data / folder)
    runner = Runner(dataset.kind, window)
    names = split_cases(dataset.names, "tune")
    templates = names[:volume_templates] if dataset.kind == "3d" else names
    others = [t for t in tasks if t != task and (t in VOLUME_TASKS) == (task in VOLUME_TASKS)]
    for n, t_name in enumerate(templates):
        controls = []
        for k in range(min(ABSENT_PER_TEMPLATE, len(others))):
            other = others[(n + k) % len(others)]
            other_names = split_cases(discover_dataset(data / ALL_TASKS[other][0]).names, "tune")
            controls.append((f"absent|{t_name}|{other}:{other_names[n % len(other_names)]}", other,
                             other_names[n % len(other_names)]))
        pending = [g for g in names if g != t_name and f"{task}|{t_name}|{g}" not in cache]
        pending_controls = [c for c in controls if f"{task}|{c[0]}" not in cache]
        if not pending and not pending_controls:
            continue
        template = runner.make_template(dataset.case(t_name), dataset.label_names)
        if template.mask is not None and not template.landmarks:
            template.landmarks = [Landmark(k, p) for k, p in _centroids(template.mask).items()]
        shot = medshot.OneShot(template)
        for g_name in pending:
            target = dataset.case(g_name)
            result = shot.run(target.image, landmarks=bool(template.landmarks), masks=dataset.has_masks)
            cache[f"{task}|{t_name}|{g_name}"] = _rows(result, runner, dataset, target)
        for key, other, g_name in pending_controls:
            image = discover_dataset(data / ALL_TASKS[other][0]).case(g_name).image
            result = shot.run(image, landmarks=bool(template.landmarks), masks=dataset.has_masks)
            cache[f"{task}|{key}"] = [{**r, "ok": False} for r in _rows(result, runner, dataset, None)]


def _rows(result, runner, dataset, target) -> list[dict]:
    """One row per label and landmark: its evidence, score and whether it is right (``target`` None: nothing is)."""
    rows = []
    image = result.image
    ndim = image.ndim
    truth = runner.truth(target) if target is not None and dataset.has_masks else None
    true = runner.truth_points(target) if target is not None else {}
    if truth is not None:
        true.update(_centroids(truth))
    label_map = None if result.label_map is None else \
        (image.to_source_array(result.label_map) if ndim == 3 else result.label_map)
    for key, e in result.evidence.items():
        if isinstance(e, LabelEvidence):
            ok = truth is not None and dice(label_map == key, truth == key) >= 0.5
            rows.append({"kind": "label", "ok": bool(ok), "ndim": ndim, "score": result.scores.get(key, np.nan),
                         **features(e)})
    for lm in result.landmarks:
        e = result.evidence.get(lm.name)
        if isinstance(e, LandmarkEvidence):
            point = image.index_to_source(lm.point)[0] if ndim == 3 else lm.point
            ok = lm.name in true and float(normalized_distance(point, np.array(true[lm.name]),
                                                               truth.shape if truth is not None else image.shape)
                                           ) <= LANDMARK_BAR
            rows.append({"kind": "landmark", "ok": bool(ok), "ndim": ndim, "score": lm.confidence, **features(e)})
    return rows


def fit(rows: list[dict], names: list[str], groups: list[str], l2: float) -> dict:
    """The model on ``names`` (groups, i.e. tasks, weighted equally), as the dict confidence.py holds."""
    X = np.array([[r[k] for k in names] for r in rows], float)
    y = np.array([r["ok"] for r in rows], float)
    counts = {g: groups.count(g) for g in set(groups)}
    weight = np.array([len(rows) / (len(counts) * counts[g]) for g in groups])
    # A floor on the spread: a feature that hardly varies on the tune half (the field of view rarely cuts
    # a cephalogram's landmarks off) must not blow up where it does vary.
    mean, sd = X.mean(0), np.maximum(X.std(0), SD_FLOOR)
    coef, intercept = fit_logistic((X - mean) / sd, y, weight, l2)
    return {"mean": dict(zip(names, np.round(mean, 5).tolist())), "sd": dict(zip(names, np.round(sd, 5).tolist())),
            "coef": dict(zip(names, np.round(coef, 4).tolist())), "intercept": round(intercept, 4)}


def predict(model: dict, rows: list[dict]) -> np.ndarray:
    z = model["intercept"] + sum(model["coef"][k] * (np.array([r[k] for r in rows]) - model["mean"][k])
                                 / model["sd"][k] for k in model["coef"])
    return 1 / (1 + np.exp(-z))


def held_out(rows: list[dict], names: list[str], groups: list[str], l2: float) -> np.ndarray:
    """Predictions for each group by a model fitted on the other groups."""
    scores = np.zeros(len(rows))
    for g in set(groups):
        train = [i for i, gg in enumerate(groups) if gg != g]
        test = [i for i, gg in enumerate(groups) if gg == g]
        if not train:
            continue
        model = fit([rows[i] for i in train], names, [groups[i] for i in train], l2)
        scores[test] = predict(model, [rows[i] for i in test])
    return scores


def held_out_auc(rows: list[dict], names: list[str], groups: list[str], l2: float) -> float:
    """ROC AUC (score vs failure) of the held-out predictions."""
    return roc_auc(held_out(rows, names, groups, l2), ~np.array([r["ok"] for r in rows], bool))


def select(rows: list[dict], candidates: list[str], groups: list[str], l2: float) -> list[tuple[float, tuple]]:
    """Every subset of ``candidates`` ranked by its held-out AUC (ties: fewer features first)."""
    ranked = [(held_out_auc(rows, list(sub), groups, l2), sub)
              for k in range(1, len(candidates) + 1) for sub in itertools.combinations(candidates, k)]
    return sorted(ranked, key=lambda r: (-round(r[0], 3), len(r[1])))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)))
    p.add_argument("--out", default="/tmp/medshot-calibrate")
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--volume-templates", type=int, default=2, help="tune-half templates per volume task")
    p.add_argument("--l2", type=float, default=1.0)
    p.add_argument("--select", action="store_true",
                   help="rank every subset of the evidence by held-out AUC (leave one task out for labels, one "
                        "template out for landmarks) instead of fitting the features confidence.py names")
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
            collect(task, data, cache, tasks, args.volume_templates)
            cache_path.write_text(json.dumps(cache))
    finally:
        cache_path.write_text(json.dumps(cache))
    kinds = (("label", LabelEvidence, LABEL_FEATURES, "LABEL_MODEL"),
             ("landmark", LandmarkEvidence, LANDMARK_FEATURES, "LANDMARK_MODEL"))
    for (kind, cls, chosen, name), ndim in itertools.product(kinds, (2, 3)):
        # Held out by task (a new task is what the model must survive); the negative controls form a group
        # of their own.
        rows, groups = [], []
        for key, recs in cache.items():
            parts = key.split("|")  # task|template|target, or task|absent|template|other task:case
            if parts[0] not in tasks:
                continue
            group = "absent" if parts[1] == "absent" else parts[0]
            for r in recs:
                if r["kind"] == kind and r.get("ndim", 2) == ndim:
                    rows.append(r)
                    groups.append(group)
        if not rows:
            continue
        wrong = ~np.array([r["ok"] for r in rows], bool)
        before = np.array([r.get("score", np.nan) for r in rows], float)
        label = f"{name}{'_3D' if ndim == 3 else ''}"
        print(f"# {kind}, {ndim}D: {len(rows)} samples, {len(set(groups))} groups (tune half), "
              f"{1 - wrong.mean():.1%} right; scores of the running code: AUC {roc_auc(before, wrong):.3f}, "
              f"ECE {expected_calibration_error(before, ~wrong):.3f}")
        if args.select:
            for auc, sub in select(rows, [f.name for f in fields(cls)], groups, args.l2)[:10]:
                print(f"#   held-out AUC {auc:.3f}: {', '.join(sub)}")
            continue
        chosen = LANDMARK_FEATURES_3D if kind == "landmark" and ndim == 3 else chosen
        model = fit(rows, list(chosen), groups, args.l2)
        held = held_out(rows, list(chosen), groups, args.l2)
        print(f"# refitted: held-out AUC {roc_auc(held, wrong):.3f}, "
              f"ECE {expected_calibration_error(held, ~wrong):.3f}; "
              f"in-sample AUC {roc_auc(predict(model, rows), wrong):.3f}, "
              f"ECE {expected_calibration_error(predict(model, rows), ~wrong):.3f}")
        print(f"{label} = {json.dumps(model, indent=4)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
