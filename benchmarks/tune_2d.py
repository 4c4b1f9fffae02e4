"""How medshot's defaults were chosen: variants of the method compared on the *tune* half only.

Every case of the tune half of each 2D task is the template in turn, every other tune-half case a
target (leave-one-out), exactly as ``evaldata_2d.py --split tune``; nothing here reads the report
half. For each variant the table gives the mean Dice per task (per target: mean over the labels in
either mask) or the median landmark NED, then the mean over the segmentation tasks and the worst
task's value. Results are cached per variant and pair in ``--out`` so that adding a variant only
runs that variant.

Usage::

    python benchmarks/tune_2d.py --variants default,no-deform,demons --out /tmp/tune2d
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import medshot
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.metrics import dice, normalized_distance
from medshot.evaluation.plan import split_cases
from medshot.evaluation.runner import Runner, make_template
from medshot.match import CorrespondOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS  # noqa: E402


def _options(**changes) -> CorrespondOptions:
    options = CorrespondOptions()
    for key, value in changes.items():
        target = options
        *path, last = key.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return options


# name -> (OneShot keyword arguments, CorrespondOptions changes)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "no-deform": ({}, {"deformation": "none"}),
    "demons": ({}, {"deformation": "demons"}),
    "feature-deform": ({}, {"deformation": "features"}),
    "auto-deform": ({}, {"deformation": "auto"}),
    "rw-strict": ({"segmenter": "randomwalker:min_agreement=0.8"}, {}),
    "rw-narrow": ({"segmenter": "randomwalker:band=0.12"}, {}),
    "random-walker": ({"segmenter": "randomwalker"}, {}),
    "no-intensity": ({}, {"intensity": False}),
    "no-identity": ({}, {"identity": False}),
    "search-only": ({}, {"intensity": False, "identity": False}),
    "upright-only": ({}, {"search.max_angle_deg": 20.0}),
    "context-0.25": ({"context": 0.25}, {}),
    "min-work-64": ({"min_work_size": 64}, {}),
    "min-work-96": ({"min_work_size": 96}, {}),
    "intensity-256": ({}, {"intensity_side": 256}),
    "affine-iter-2": ({}, {"refine.affine_iterations": 2}),
}


def target_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    labels = sorted((set(np.unique(pred).tolist()) | set(np.unique(truth).tolist())) - {0})
    return float(np.mean([dice(pred == k, truth == k) for k in labels])) if labels else 1.0


def run_variant(name: str, task: str, data: Path, cache: dict) -> dict[str, float]:
    kwargs, changes = VARIANTS[name]
    dataset = discover_dataset(data / TASKS[task])
    names = split_cases(dataset.names, "tune")
    out: dict[str, float] = {}
    for t_name in names:
        pending = [g for g in names if g != t_name and f"{name}|{task}|{t_name}|{g}" not in cache]
        if pending:
            template = make_template(dataset.case(t_name), dataset.label_names)
            kw = dict(kwargs)
            if ":" in kw.get("segmenter", ""):
                seg, _, opts = kw["segmenter"].partition(":")
                kw["segmenter"] = medshot.get_segmenter(seg, **{k: float(v) for k, v in
                                                                 (o.split("=") for o in opts.split(","))})
            shot = medshot.OneShot(template, options=_options(**copy.deepcopy(changes)), **kw)
            for g_name in pending:
                target = dataset.case(g_name)
                start = time.perf_counter()
                result = shot.run(target.image, landmarks=dataset.has_landmarks, masks=dataset.has_masks)
                record = {"seconds": time.perf_counter() - start, "chosen": result.correspondence}
                if dataset.has_masks:
                    record["dice"] = target_dice(result.label_map, Runner("2d").truth(target))
                if dataset.has_landmarks:
                    truth = {lm.name: lm.point for lm in target.landmarks}
                    pred = result.landmark_points
                    true = np.array([truth[lm.name] for lm in result.landmarks])
                    record["ned"] = float(np.median(normalized_distance(pred, true, target.shape)))
                cache[f"{name}|{task}|{t_name}|{g_name}"] = record
        for g_name in names:
            if g_name != t_name:
                out[f"{t_name}|{g_name}"] = cache[f"{name}|{task}|{t_name}|{g_name}"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)))
    p.add_argument("--out", default="/tmp/medshot-tune-2d")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--variants", default="default")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; skipping")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    table = {}
    try:
        for v in variants:
            for task in tasks:
                print(f"[{v}] {task}", file=sys.stderr, flush=True)
                table[(v, task)] = run_variant(v, task, data, cache)
                cache_path.write_text(json.dumps(cache))
    finally:
        cache_path.write_text(json.dumps(cache))
    print("| variant | " + " | ".join(tasks) + " | mean Dice | worst task | s / target |")
    print("|---|" + "---:|" * (len(tasks) + 3))
    for v in variants:
        cells, dices, seconds = [], [], []
        for task in tasks:
            recs = list(table[(v, task)].values())
            seconds += [r["seconds"] for r in recs]
            if "dice" in recs[0]:
                m = float(np.mean([r["dice"] for r in recs]))
                worst = min(np.mean([r["dice"] for k, r in table[(v, task)].items() if k.startswith(t + "|")])
                            for t in {k.split("|")[0] for k in table[(v, task)]})
                dices.append(m)
                cells.append(f"{m:.3f} ({worst:.2f})")
            else:
                cells.append(f"NED {np.median([r['ned'] for r in recs]):.4f}")
        summary = f"{np.mean(dices):.3f} | {min(dices):.3f}" if dices else " | "
        print(f"| {v} | " + " | ".join(cells) + f" | {summary} | {np.mean(seconds):.2f} |")
    print("\nDice cells: mean over pairs (worst template's mean in brackets); tune half only.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
