"""Benchmark (issue 12): several templates fused vs one, leave-one-out on one half of the 2D evaldata.

For every case of the chosen half as target, every other case of the half is a template: each
(template, target) pair is matched once with the weights-free default (what a single template
gives), then every set of three of those templates is fused from the pairs' results exactly as
:class:`medshot.Ensemble` fuses them (``--fusion local``: weights per template and per pixel by
local similarity; ``vote``: per template only). Per task the table gives, averaged over (target,
triple): the fused Dice, the mean and the best of the three single templates' Dice (the best is an
oracle choice: it knows the truth), and the spread over template choices: per target, the standard
deviation of Dice over single templates and over triples, averaged over targets. Landmark tasks
give the median NED likewise. Dice is the table's definition of ``benchmarks/evaldata_2d.py``
(per target the mean over the labels in either mask). The fused score's ROC AUC against
Dice < 0.5 checks that it stays calibrated.

``--timing`` also runs :class:`medshot.Ensemble` end to end on a few targets of one task with every
other case as template and K = 1, 3 and all, in the same run.

Usage::

    python benchmarks/fusion_2d.py --split report --out /tmp/fusion > table.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from medshot import MedshotError, OneShot
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.metrics import dice_per_label, normalized_distance
from medshot.evaluation.plan import parse_list, split_cases
from medshot.evaluation.runner import runner_for
from medshot.pipeline.ensemble import fuse_results
from medshot.pipeline.fusion import local_agreement, on_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS, roc_auc  # noqa: E402


def table_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the labels in either map (a label in only one of them counts 0)."""
    labels = sorted(({int(v) for v in np.unique(prediction)} | {int(v) for v in np.unique(truth)}) - {0})
    if not labels:
        return 1.0
    return float(np.mean(list(dice_per_label(prediction, truth, labels).values())))


def median_ned(found: dict[str, np.ndarray], truth: dict[str, np.ndarray], shape) -> float:
    common = [n for n in truth if n in found]
    if not common:
        return float("nan")
    return float(np.median(normalized_distance(np.array([found[n] for n in common]),
                                               np.array([truth[n] for n in common]), shape)))


def load_half(folder: Path, split: str, window: tuple[float, float] | None = None):
    """One half of a task: ``(dataset, runner, names, cases, templates)``, every case of the half a template
    (its mask and landmarks; ``window``: the CT window the task is evaluated in)."""
    dataset = discover_dataset(folder)
    runner = runner_for(dataset.kind, window)
    names = split_cases([c.name for c in dataset.cases], split)
    cases = {c.name: c for c in dataset.cases if c.name in names}
    templates = {n: runner.make_template(cases[n], dataset.label_names) for n in names}
    return dataset, runner, names, cases, templates


def run_task(task: str, folder: Path, split: str, size: int, timing: bool, max_targets: int | None) -> dict:
    dataset, runner, names, cases, templates = load_half(folder, split)
    shots = {n: OneShot(templates[n]) for n in names}
    rows = {"single": [], "mean3": [], "best3": [], "local": [], "vote": [], "single_sd": [], "local_sd": [],
            "vote_sd": [], "ned_single": [], "ned_fused": [], "ned_best3": [], "ned_single_sd": [], "ned_fused_sd": []}
    scores, failed = [], []
    seconds = []
    for target_name in names[:max_targets]:
        target_case = cases[target_name]
        image = shots[target_name].load(target_case.image)
        truth = runner.truth(target_case) if target_case.mask is not None else None
        truth_points = {lm.name: np.asarray(lm.point, float) for lm in target_case.landmarks}
        pair = {}
        for name in names:
            if name == target_name:
                continue
            start = time.perf_counter()
            shot = shots[name]
            stage, prepared, corr = shot.correspond(image)
            result = shot.carry(stage, prepared, corr, landmarks=bool(templates[name].landmarks),
                                masks=templates[name].mask is not None)
            local = None
            if result.label_map is not None:
                local = on_image(local_agreement(stage.work, prepared.work, corr.backward), prepared.grid, image.shape)
            seconds.append(time.perf_counter() - start)
            pair[name] = (result, local)
        single = {n: table_dice(r.label_map, truth) for n, (r, _) in pair.items()} if truth is not None else {}
        single_ned = {n: median_ned({lm.name: lm.point for lm in r.landmarks}, truth_points, image.shape)
                      for n, (r, _) in pair.items()} if truth_points else {}
        fused_dice = {"local": [], "vote": []}
        fused_ned = []
        for triple in itertools.combinations(sorted(pair), size):
            results = [pair[n][0] for n in triple]
            for fusion in ("local", "vote") if truth is not None else ("vote",):
                local = [pair[n][1] for n in triple] if fusion == "local" else None
                fused = fuse_results(image, results, list(triple), local)
                if truth is not None:
                    d = table_dice(fused.label_map, truth)
                    fused_dice[fusion].append(d)
                    rows[fusion].append(d)
                    if fusion == "local":
                        rows["mean3"].append(np.mean([single[n] for n in triple]))
                        rows["best3"].append(max(single[n] for n in triple))
                        for label, s in fused.scores.items():
                            scores.append((s, table_dice(fused.label_map == label, truth == label)))
                if truth_points and fusion == "vote":
                    ned = median_ned({lm.name: lm.point for lm in fused.landmarks}, truth_points, image.shape)
                    fused_ned.append(ned)
                    rows["ned_fused"].append(ned)
                    rows["ned_best3"].append(min(single_ned[n] for n in triple))
        if single:
            rows["single"] += list(single.values())
            rows["single_sd"].append(np.std(list(single.values())))
            rows["local_sd"].append(np.std(fused_dice["local"]))
            rows["vote_sd"].append(np.std(fused_dice["vote"]))
        if single_ned:
            rows["ned_single"] += list(single_ned.values())
            rows["ned_single_sd"].append(np.std(list(single_ned.values())))
            rows["ned_fused_sd"].append(np.std(fused_ned))
    out = {k: float(np.mean(v)) if v and not k.startswith("ned") else (float(np.median(v)) if v else float("nan"))
           for k, v in rows.items()}
    for k in ("ned_single_sd", "ned_fused_sd"):
        out[k] = float(np.mean(rows[k])) if rows[k] else float("nan")
    out["triples"] = len(rows["local"]) or len(rows["ned_fused"])
    out["pairs"] = len(seconds)
    out["pair_seconds"] = float(np.mean(seconds)) if seconds else float("nan")
    if scores:
        s, d = np.array(scores).T
        out["auc"] = roc_auc(s, d < 0.5) if 0 < np.sum(d < 0.5) < len(d) else float("nan")
    if timing:
        out["timing"] = time_top_k(templates, names, cases, max_targets=3)
    out["failed"] = failed
    return out


def time_top_k(templates: dict, names: list[str], cases: dict, max_targets: int = 3) -> dict[str, float]:
    """Seconds per target of :class:`medshot.Ensemble` with K = 1, 3 and all (every other case a template)."""
    out = {}
    targets = names[:max_targets]
    for k in (1, 3, None):
        per_target = []
        for target_name in targets:
            shot = OneShot([templates[n] for n in names if n != target_name], top_k=k)
            start = time.perf_counter()
            shot.run(cases[target_name].image)
            per_target.append(time.perf_counter() - start)
        out["all" if k is None else str(k)] = float(np.mean(per_target))
    out["templates"] = len(names) - 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--split", choices=["all", "tune", "report"], default="report")
    p.add_argument("--size", type=int, default=3, help="templates per fusion (default 3)")
    p.add_argument("--max-targets", type=int, default=None)
    p.add_argument("--timing", default="hc18", help="task to time K = 1, 3, all on ('none': skip)")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; nothing to measure")
        return 0
    print(f"`python benchmarks/fusion_2d.py {' '.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{args.split} half, every case the target in turn, every other case of the half a template, "
          f"every set of {args.size} of them fused\n")
    print("| task | triples | single template Dice | mean of the 3 | best of the 3 (oracle) | fused local | fused vote "
          "| spread single → fused (SD over choices) | fused score AUC | median NED single / best of 3 / fused "
          "| NED spread single → fused | s / pair |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---:|")
    timings = {}
    for task in parse_list(args.tasks):
        try:
            r = run_task(task, data / TASKS[task], args.split, args.size, task == args.timing, args.max_targets)
        except MedshotError as exc:
            print(f"| {task} | failed: {exc} |")
            continue

        def f(key, spec=".3f", r=r):
            v = r.get(key, float("nan"))
            return format(v, spec) if v == v else ""

        spread = f"{f('single_sd')} → {f('local_sd')}" if r["single_sd"] == r["single_sd"] else ""
        ned = f"{f('ned_single', '.4f')} / {f('ned_best3', '.4f')} / {f('ned_fused', '.4f')}" \
            if r["ned_fused"] == r["ned_fused"] else ""
        ned_spread = f"{f('ned_single_sd', '.4f')} → {f('ned_fused_sd', '.4f')}" if ned else ""
        print(f"| {task} | {r['triples']} | {f('single')} | {f('mean3')} | {f('best3')} | {f('local')} | {f('vote')} "
              f"| {spread} | {f('auc', '.2f')} | {ned} | {ned_spread} | {f('pair_seconds', '.2f')} |", flush=True)
        if "timing" in r:
            timings[task] = r["timing"]
    for task, t in timings.items():
        print(f"\n{task}: `OneShot([...], top_k=K)` with {t['templates']} templates, seconds per target "
              f"(same run): K=1 {t['1']:.2f}, K=3 {t['3']:.2f}, all {t['all']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
