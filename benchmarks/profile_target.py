"""Where one target's time goes: cProfile of medshot on one target of an evaldata task, after a warm-up.

The first case (in name order) is the template, or the first ``--templates`` cases cycling through all
but the last few (``--top-k`` then ranks them, as ``speed.py``'s several-template row does); a warm-up
target fills the lazy caches (pose bank spectra per target size); the next ``--targets`` cases are
profiled. Prints seconds per target and the cumulative profile's top rows. Speed work starts here;
the ratios to report come from ``speed.py``.

Usage::

    python benchmarks/profile_target.py mr_hippocampus_msd/slices2d
    python benchmarks/profile_target.py us_fetal_head_hc18 --templates 20 --top-k 3 --targets 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", help="a folder under --data, e.g. mr_hippocampus_msd/slices2d")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--templates", type=int, default=1)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--targets", type=int, default=4)
    p.add_argument("--window", type=float, nargs=2, default=None, help="CT window (volumes), e.g. -160 240")
    p.add_argument("--rows", type=int, default=40)
    args = p.parse_args(argv)
    folder = Path(args.data) / args.task
    if not folder.is_dir():
        print(f"{folder} not found; nothing to profile")
        return 0

    from medshot.evaluation.dataset import discover_dataset
    from medshot.evaluation.runner import make_template, runner_for

    dataset = discover_dataset(folder)
    runner = runner_for(dataset.kind, tuple(args.window) if args.window else None)
    names = sorted(c.name for c in dataset.cases)
    if len(names) < args.targets + 2:
        raise SystemExit(f"{folder} has {len(names)} cases; a template, a warm-up and {args.targets} targets "
                         f"need {args.targets + 2}")
    targets = names[-(args.targets + 1):]
    pool = names[:-(args.targets + 1)]
    templates = [make_template(dataset.case(pool[i % len(pool)]), dataset.label_names, runner.window)
                 for i in range(args.templates)]
    shot = runner.make_shot(templates if len(templates) > 1 else templates[0], "classical", "classical")
    if args.top_k is not None:
        shot.top_k = args.top_k
    landmarks = dataset.has_landmarks and not dataset.has_masks
    runner.predict(shot, dataset.case(targets[0]), landmarks, not landmarks, None)  # warm-up
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for name in targets[1:]:
        runner.predict(shot, dataset.case(name), landmarks, not landmarks, None)
    profile.disable()
    print(f"`python benchmarks/profile_target.py {args.task}` — {len(templates)} template(s), "
          f"top-k {args.top_k}: {(time.perf_counter() - start) / args.targets:.3f} s per target (profiled)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
