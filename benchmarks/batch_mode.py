"""Benchmark (issue 18): batch mode against the single pass and three real templates fused.

On one half of a task's cases, every case is the template in turn and the other cases of the half are
its batch (unlabelled) and its targets. Every (template, target) pair is matched once with the
weights-free default (pass 1 = what a single template gives); from those pairs

- ``single``: the template alone;
- ``fused3``: the template and the two cases after it (in name order, skipping the target) as real
  templates, fused as :class:`medshot.Ensemble` fuses them (local vote);
- ``batch``: :class:`medshot.pipeline.batch.Batch` on the template's batch, from the same pass 1.

Per task: mean Dice (per target the mean over the labels in either mask) with the spread over
templates (worst / median / best of the per-template means), the score's ROC AUC against Dice < 0.5
(pooled labels), median normalised landmark distance for landmark tasks, and seconds per target of
batch mode ÷ the single pass (same run, same pairs). A case that fails scores 0 (Dice) and 1 (NED).

Volumes (``hippocampus_3d``, ``openkbp_3d``) are scored on the array medshot matches on (canonical
voxels), with the CT window ``evaldata_3d.py`` uses; ``--max-templates K`` takes the first K cases of the
half as templates and runs pass 1 only for them and their fused3 helpers (volumes: minutes per pair).

``--variants`` also runs other batch settings from the same pass 1 (pseudo-template matches shared
between variants where the pseudo-template is the same): ``k1``, ``k3`` (neighbours), ``ow1`` (the
original template weighs 1, as one pseudo-template), ``k3ow1``, ``r1`` (one round: the first round of
the default), ``noconsensus`` (scores without the consensus factor), ``m2`` and ``m3`` (batches of
only the first 2 or 3 targets of each template), ``perlabel`` (a target joins the pool with the labels
and landmarks it is confident on: ``BatchOptions(pool="label")``), ``clf05``, ``clf10``, ``clf25`` (the
default's label maps refined by the pixel classifier of :mod:`medshot.pipeline.classifier`, trained on the
template and the pool; shape-prior width 0.05, 0.10, 0.25 of each label's equivalent radius), ``clf10t``
(width 0.10, trained on the template alone).

Usage::

    python benchmarks/batch_mode.py --split tune --variants k3,r1,noconsensus,m3 > tune.md
    python benchmarks/batch_mode.py --split report > report.md
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from medshot import MedshotError, OneShot
from medshot.data.read import read_label_map
from medshot.evaluation.plan import parse_list
from medshot.match.signature import image_signature
from medshot.pipeline.batch import Batch, BatchOptions, Found, outliers
from medshot.pipeline.classifier import fold_of, train_classifier
from medshot.pipeline.ensemble import fuse_results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS, roc_auc  # noqa: E402
from evaldata_3d import TASKS as TASKS_3D  # noqa: E402
from fusion_2d import load_half, median_ned, table_dice  # noqa: E402

VOLUME_TASKS = {f"{name}_3d": task["folder"] for name, task in TASKS_3D.items()}
# the CT window that evaldata_3d.py evaluates the volumes with (2D tasks: their images are already 8-bit)
WINDOWS = {f"{name}_3d": task["window"] for name, task in TASKS_3D.items()}
VARIANTS = {"k1": dict(neighbours=1), "k3": dict(neighbours=3), "ow1": dict(original_weight=1.0),
            "k3ow1": dict(neighbours=3, original_weight=1.0), "r1": {}, "noconsensus": {}, "m2": {}, "m3": {},
            "perlabel": dict(pool="label"), "clf05": {}, "clf10": {}, "clf25": {}, "clf10t": {}}
# pixel classifier variants: the shape prior's width (a fraction of each label's equivalent radius), and
# whether the pool members train it besides the template
CLASSIFIER = {"clf05": (0.05, True), "clf10": (0.10, True), "clf25": (0.25, True), "clf10t": (0.10, False)}


class SharedBatch(Batch):
    """A Batch whose pseudo-template matches are remembered across variants (same pseudo-template, same target)."""

    memo: dict = {}

    def _helper_shot(self, name, helper):
        self._current = (name, _fingerprint(helper))
        return super()._helper_shot(name, helper)

    def match(self, shot, image):
        if shot is self.shot:
            return super().match(shot, image)
        key = (self.name, str(image.path), *self._current)
        if key not in self.memo:
            self.memo[key] = super().match(shot, image)
        return self.memo[key]


def _fingerprint(found: Found) -> str:
    digest = hashlib.sha1()
    if found.result.label_map is not None:
        digest.update(np.ascontiguousarray(found.result.label_map).tobytes())
    for lm in found.result.landmarks:
        digest.update(np.asarray(lm.point, float).tobytes())
    return digest.hexdigest()


def measure(result, truth, truth_points, shape) -> tuple[float, float, list[tuple[float, float]]]:
    """(Dice, median NED, [(label score, label Dice)]) of one result (NaN where not applicable)."""
    d, ned, pairs = float("nan"), float("nan"), []
    if truth is not None:
        label_map = result.label_map if result.label_map is not None else np.zeros(truth.shape, np.uint8)
        d = table_dice(label_map, truth)
        for label, s in result.scores.items():
            pairs.append((s, table_dice(label_map == label, truth == label)))
    if truth_points:
        ned = median_ned({lm.name: lm.point for lm in result.landmarks}, truth_points, shape)
    return d, ned, pairs


def run_task(task: str, folder: Path, split: str, variants: list[str], max_templates: int | None) -> dict:
    _, _, names, cases, templates = load_half(folder, split, WINDOWS.get(task))
    masks = templates[names[0]].mask is not None
    landmarks = not masks
    if masks:
        for t in templates.values():
            t.landmarks = []  # segmentation tasks: labels only (derived centroids are not what is measured)
    shots = {n: OneShot(templates[n]) for n in names}
    images = {n: shots[n].load(cases[n].image) for n in names}
    # truth on the array medshot matches on (volumes: canonical RAS voxels, not the file's own axis order)
    truth = {n: read_label_map(cases[n].mask, images[n])[0] if cases[n].mask is not None else None for n in names}
    points = {n: {lm.name: images[n].source_to_index(lm.point)[0] for lm in cases[n].landmarks} for n in names}
    batches = {n: SharedBatch(shots[n], landmarks=landmarks, masks=masks) for n in names}
    template_names = names[:max_templates] if max_templates else names
    # pass 1 only where a table needs it: the templates' rows and their fused3 helpers' rows (the two after
    # the template, or the third when the target is one of them)
    rows_needed = {names[(names.index(t) + k) % len(names)] for t in template_names for k in range(4)}
    first: dict[tuple[str, str], Found] = {}
    seconds_first = {n: 0.0 for n in names}
    for t in [n for n in names if n in rows_needed]:
        for g in names:
            if g != t:
                start = time.perf_counter()
                try:
                    first[t, g] = batches[t].first(images[g])
                except MedshotError as exc:
                    print(f"<!-- {task}: {t} -> {g} failed: {exc} -->", file=sys.stderr)
                    first[t, g] = None
                seconds_first[t] += time.perf_counter() - start
    methods = ["single", "fused3", "batch"] + variants
    rows = {m: {} for m in methods}  # method -> template -> list of (dice, ned)
    scores = {m: [] for m in methods}
    seconds_batch = {}
    for t in template_names:
        others = [g for g in names if g != t]
        ok = [g for g in others if first[t, g] is not None]
        for m in methods:
            rows[m][t] = []

        def record(method, g, result, t=t):
            d, ned, pairs = measure(result, truth[g], points[g], images[g].shape) if result is not None else \
                (0.0 if truth[g] is not None else float("nan"), 1.0 if points[g] else float("nan"), [])
            rows[method][t].append((d, ned))
            scores[method].extend(pairs)

        for g in others:
            record("single", g, first[t, g].result if first[t, g] is not None else None)
            helpers = [h for h in (names[(names.index(t) + k) % len(names)] for k in range(1, len(names)))
                       if h != g][:2]
            parts = [first[h, g] for h in [t, *helpers] if first.get((h, g)) is not None]
            fused = fuse_results(images[g], [p.result for p in parts], [t, *helpers][:len(parts)],
                                 [p.local / 255.0 if p.local is not None else None for p in parts]
                                 if masks else None) if parts else None
            record("fused3", g, fused)
        start = time.perf_counter()
        batch = SharedBatch(shots[t], BatchOptions(), landmarks=landmarks, masks=masks)
        results = dict(zip(ok, batch.propagate([first[t, g] for g in ok])))
        seconds_batch[t] = time.perf_counter() - start
        history = batch.history
        for g in others:
            record("batch", g, results.get(g))
        for v in variants:
            if v == "r1":
                got = dict(zip(ok, history[0])) if history else results
            elif v == "noconsensus":
                got = {g: _without_consensus(r) for g, r in results.items()}
            elif v in CLASSIFIER:
                got = results
                if masks and batch.plan is not None:
                    width, with_pool = CLASSIFIER[v]
                    done = [results[g] for g in ok]
                    model = train_classifier(images[t], truth[t], shots[t].window,
                                             {i: done[i] for i in sorted(batch.plan.pool)} if with_pool else {},
                                             width, with_template_only=not with_pool)
                    got = {g: model.refine(done[i], fold_of(i)) for i, g in enumerate(ok)}
            else:
                keep = ok[:int(v[1:])] if v in ("m2", "m3") else ok
                options = BatchOptions(**VARIANTS[v])
                if v in ("m2", "m3"):
                    options.min_targets = 1
                got = dict(zip(keep, SharedBatch(shots[t], options, landmarks=landmarks, masks=masks)
                               .propagate([first[t, g] for g in keep])))
            for g in others:
                if v in ("m2", "m3") and g not in got:
                    continue
                record(v, g, got.get(g))
    out = {"pairs": sum(len(v) for v in rows["single"].values()), "templates": len(template_names)}
    for m in methods:
        per_template = [np.mean([d for d, _ in v]) for v in rows[m].values() if v and np.isfinite(v[0][0])]
        neds = [n for v in rows[m].values() for _, n in v if np.isfinite(n)]
        out[m] = dict(dice=float(np.mean([d for v in rows[m].values() for d, _ in v])) if per_template else np.nan,
                      spread=(min(per_template), float(np.median(per_template)), max(per_template))
                      if per_template else None,
                      ned=float(np.median(neds)) if neds else np.nan,
                      per_template_ned=[float(np.median([n for _, n in v])) for v in rows[m].values() if v]
                      if neds else None)
        out[m]["pairs"] = scores[m]
        if scores[m]:
            s, d = np.array(scores[m]).T
            out[m]["auc"] = roc_auc(s, d < 0.5) if 0 < np.sum(d < 0.5) < len(d) else float("nan")
            out[m]["misses"] = int(np.sum(d < 0.5))
    # single-pass time per target: the pass-1 time of the same templates
    single_time = sum(seconds_first[t] for t in template_names)
    out["ratio"] = (single_time + sum(seconds_batch.values())) / single_time
    return out


def _without_consensus(result):
    if result is None:
        return None
    r = copy.copy(result)
    r.scores = {lab: result.evidence.get(f"score before consensus {lab}", s) for lab, s in result.scores.items()}
    return r


def outlier_spread(task: str, folder: Path, split: str) -> str:
    """Per template of the half: how far its targets' signature similarity to it falls below their median
    (the largest drop), and how many targets :func:`medshot.pipeline.batch.outliers` calls outliers."""
    _, _, names, _, templates = load_half(folder, split, WINDOWS.get(task))
    signatures = {n: image_signature(templates[n].image, templates[n].window) for n in names}
    drops, flagged = [], 0
    for t in names:
        values = np.array([signatures[g] @ signatures[t] for g in names if g != t])
        drops.append(float(np.median(values) - values.min()))
        flagged += len(outliers(values))
    return (f"| {task} | {len(names)} | {min(drops):.3f} / {np.median(drops):.3f} / {max(drops):.3f} | "
            f"{flagged} of {len(names) * (len(names) - 1)} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--tasks", default=",".join([*TASKS, *VOLUME_TASKS]))
    p.add_argument("--split", choices=["tune", "report"], required=True)
    p.add_argument("--variants", default="", help=f"other batch settings ({', '.join(VARIANTS)})")
    p.add_argument("--max-templates", type=int, default=None, help="only the first K cases as templates (time)")
    p.add_argument("--outliers", action="store_true", help="only the targets' similarity to their templates")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"evaldata not found at {data}; nothing to measure")
        return 0
    if args.outliers:
        print(f"`python benchmarks/batch_mode.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
        print("| task | cases | largest drop below the median similarity, per template (min / median / max) "
              "| targets called outliers |")
        print("|---|---:|---|---:|")
        for task in parse_list(args.tasks):
            print(outlier_spread(task, data / {**TASKS, **VOLUME_TASKS}[task], args.split), flush=True)
        return 0
    variants = parse_list(args.variants) if args.variants else []
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v}")
    print(f"`python benchmarks/batch_mode.py {' '.join(argv if argv is not None else sys.argv[1:])}` — {args.split} "
          "half; every case of the half the template in turn, the others its batch and targets\n")
    methods = ["single", "fused3", "batch", *variants]
    print("| task | templates × targets | " + " | ".join(f"{m} Dice (worst / median / best template)"
                                                      for m in methods)
          + " | " + " | ".join(f"{m} AUC" for m in methods) + " | batch ÷ single s/target |")
    print("|---|---:|" + "---|" * (2 * len(methods)) + "---:|")
    pooled = {m: [] for m in methods}  # (label score, label Dice) of every task run, per method
    for task in parse_list(args.tasks):
        folder = data / {**TASKS, **VOLUME_TASKS}[task]
        try:
            r = run_task(task, folder, args.split, variants, args.max_templates)
        except MedshotError as exc:
            print(f"| {task} | failed: {exc} |")
            continue

        def cell(m, r=r):
            v = r[m]
            if np.isfinite(v["dice"]):
                lo, mid, hi = v["spread"]
                return f"{v['dice']:.3f} ({lo:.3f} / {mid:.3f} / {hi:.3f})"
            per = v["per_template_ned"]
            return f"NED {v['ned']:.4f} ({max(per):.4f} / {np.median(per):.4f} / {min(per):.4f})"

        def auc(m, r=r):
            v = r[m]
            return f"{v['auc']:.2f} ({v['misses']} misses)" if "auc" in v and np.isfinite(v["auc"]) else ""

        print(f"| {task} | {r['templates']} × {r['pairs'] // max(r['templates'], 1)} | "
              + " | ".join(cell(m) for m in methods) + " | " + " | ".join(auc(m) for m in methods)
              + f" | {r['ratio']:.2f} |", flush=True)
        for m in methods:
            pooled[m] += r[m]["pairs"]
    cells = []
    for m in methods:
        if pooled[m]:
            s, d = np.array(pooled[m]).T
            misses = int(np.sum(d < 0.5))
            auc = roc_auc(s, d < 0.5) if 0 < misses < len(d) else float("nan")
            cells.append(f"{m} {auc:.2f} ({misses} misses of {len(d)} labels)")
    if cells:
        print("\nScore AUC (Dice < 0.5), pooled over the tasks of this run: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
