"""Benchmark (issue 20): which templates ``top_k`` keeps, and what a cheap shortlist costs in Dice.

``OneShot([...], top_k=K)`` ranks every template on its verified affine choice (pose search,
refinement, verification) before deforming the K best: with 20 templates that ranking is most of the
time. A whole-image signature (:func:`medshot.match.signature.image_signature`, microseconds) can
shortlist the templates first. On one half of a task, every case is the target in turn and every other
case of the half a template; each (template, target) pair is matched once, recording its affine score
and its full result, and the strategies are compared on the same pairs:

- ``affine``: today's choice, the K best affine scores among all templates;
- ``signature``: the K templates most like the target by signature, no matching to rank;
- ``shortlist M``: the M most like the target by signature, then the K best affine scores among them.

Per task and K: mean Dice of the K chosen templates fused as :class:`medshot.Ensemble` fuses them (median
NED for landmark tasks), and how often the shortlist holds the affine's K (recall).

Usage::

    python benchmarks/top_k_choice.py --split tune > top_k_tune.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from medshot import OneShot
from medshot.evaluation.plan import parse_list
from medshot.match.signature import image_signature
from medshot.pipeline.ensemble import fuse_results
from medshot.pipeline.fusion import local_agreement, on_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS  # noqa: E402
from fusion_2d import load_half, median_ned, table_dice  # noqa: E402


def strategies(k: int, factors: list[int]) -> list[str]:
    return ["affine", "signature", *[f"shortlist {f * k}" for f in factors]]


def choose(strategy: str, k: int, affine: dict[str, float], similarity: dict[str, float]) -> list[str]:
    """The K templates a strategy keeps, best affine score first (the order fusion gets them in)."""
    names = sorted(affine)
    by_signature = sorted(names, key=lambda n: (-similarity[n], n))
    if strategy == "signature":
        pool = by_signature[:k]
    elif strategy.startswith("shortlist"):
        pool = by_signature[:int(strategy.split()[1])]
    else:
        pool = names
    return sorted(pool, key=lambda n: (-affine[n], n))[:k]


def run_task(folder: Path, split: str, ks: list[int], factors: list[int]) -> dict:
    _, runner, names, cases, templates = load_half(folder, split)
    shots = {n: OneShot(templates[n]) for n in names}
    signatures = {n: image_signature(templates[n].image, templates[n].window) for n in names}
    values: dict[tuple[int, str], list[float]] = {}
    recall: dict[tuple[int, str], list[float]] = {}
    for target in names:
        image = shots[target].load(cases[target].image)
        truth = runner.truth(cases[target]) if cases[target].mask is not None else None
        points = {lm.name: np.asarray(lm.point, float) for lm in cases[target].landmarks}
        target_signature = image_signature(image, shots[target].window)
        affine, similarity, pair = {}, {}, {}
        for name in names:
            if name == target:
                continue
            shot = shots[name]
            stage, prepared, corr = shot.correspond(image, deform=False)
            affine[name] = corr.score
            similarity[name] = float(signatures[name] @ target_signature)
            corr = shot.deform(stage, prepared, corr)
            result = shot.carry(stage, prepared, corr, landmarks=truth is None, masks=truth is not None)
            local = None if truth is None else \
                on_image(local_agreement(stage.work, prepared.work, corr.backward), prepared.grid, image.shape)
            pair[name] = (result, local, corr.score)
        for k in ks:
            best_affine = set(choose("affine", k, affine, similarity))
            for strategy in strategies(k, factors):
                kept = choose(strategy, k, affine, similarity)
                kept.sort(key=lambda n: (-pair[n][2], n))
                fused = fuse_results(image, [pair[n][0] for n in kept], kept,
                                     [pair[n][1] for n in kept] if truth is not None else None)
                value = table_dice(fused.label_map, truth) if truth is not None else \
                    median_ned({lm.name: lm.point for lm in fused.landmarks}, points, image.shape)
                values.setdefault((k, strategy), []).append(value)
                recall.setdefault((k, strategy), []).append(len(best_affine & set(kept)) / k)
    return {"templates": len(names) - 1, "targets": len(names), "landmarks": cases[names[0]].mask is None,
            "values": values, "recall": recall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--split", choices=["tune", "report"], required=True)
    p.add_argument("--k", default="1,3", help="top-k values")
    p.add_argument("--factors", default="2", help="shortlist sizes as multiples of K")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; nothing to measure")
        return 0
    ks = [int(v) for v in parse_list(args.k)]
    factors = [int(v) for v in parse_list(args.factors)]
    print(f"`python benchmarks/top_k_choice.py {' '.join(argv if argv is not None else sys.argv[1:])}` — "
          f"{args.split} half; every case the target in turn, the other cases its templates\n")
    print("| task | templates per target | K | affine | signature | " + " | ".join(f"shortlist {f}K" for f in factors)
          + " | recall of the affine's K (signature, shortlists) |")
    print("|---|---:|---:|" + "---|" * (len(factors) + 2) + "---|")
    for task in parse_list(args.tasks):
        r = run_task(data / TASKS[task], args.split, ks, factors)
        for k in ks:
            cells = []
            for strategy in strategies(k, factors):
                v = r["values"][k, strategy]
                cells.append(f"NED {np.median(v):.4f}" if r["landmarks"] else f"{np.mean(v):.3f}")
            recalls = ", ".join(f"{s.split()[-1]}: {np.mean(r['recall'][k, s]):.2f}"
                                for s in strategies(k, factors)[1:])
            print(f"| {task} | {r['templates']} | {k} | " + " | ".join(cells) + f" | {recalls} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
