"""``medshot demo``: the whole pipeline on synthetic cases the package makes, with known truth (offline)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run end to end on a synthetic case the package makes (offline)")
    p.add_argument("--out", default="medshot-demo", help="output folder (default: medshot-demo)")


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out))


def run_demo(out_dir: Path, n_targets: int = 3) -> int:
    """Write a template and warped targets, run localize + segment, report Dice and NED."""
    from ..data.template import Template
    from ..data.write import OutputSet, save_png, write_csv
    from ..evaluation.metrics import dice_per_label, normalized_distance
    from ..pipeline import OneShot
    from ..synthetic import LANDMARK_NAMES, make_phantom, random_warp
    from ..viz import overlay

    source = make_phantom()
    cases = [random_warp(source, seed=s)[0] for s in range(1, n_targets + 1)]
    rows = []
    with OutputSet(out_dir) as out:
        data = out_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        # Inputs for the CLI walk-through; written directly (they are the demo's own inputs).
        save_png(data / "template.png", (source.image * 255).astype(np.uint8))
        save_png(data / "template_mask.png", source.mask)
        write_csv(data / "template_landmarks.csv", ["name", "x", "y"],
                  [[n, float(x), float(y)] for n, (x, y) in zip(LANDMARK_NAMES, source.landmarks_xy)])
        (data / "targets").mkdir(exist_ok=True)
        for i, case in enumerate(cases, start=1):
            save_png(data / "targets" / f"target_{i}.png", (case.image * 255).astype(np.uint8))
        template = Template.build(data / "template.png", data / "template_mask.png", data / "template_landmarks.csv",
                                  label_names={1: "organ A", 2: "organ B"})
        template.save(data / "template.json")
        shot = OneShot(template)
        print(f"medshot demo: template + {n_targets} synthetic targets (rotated, scaled, shifted, deformed); "
              "weights-free backend")
        for i, case in enumerate(cases, start=1):
            result = shot.run(data / "targets" / f"target_{i}.png")
            truth = case.landmarks_xy[:, ::-1]  # the phantom's (x, y) as (row, col)
            dice = dice_per_label(result.label_map, case.mask)
            ned = normalized_distance(result.landmark_points, truth, case.image.shape)
            pic = overlay(case.image, result.label_map, result.landmark_points, truth=truth)
            save_png(out.path_for(f"target_{i}_overlay.png"), pic)
            print(f"  target_{i}: Dice organ A {dice[1]:.3f}, organ B {dice[2]:.3f}; "
                  f"landmark NED median {np.median(ned):.4f} (max {ned.max():.4f}); {result.seconds:.2f} s")
            rows.append([f"target_{i}", round(dice[1], 4), round(dice[2], 4), round(float(np.median(ned)), 5),
                         round(result.seconds, 3)])
        write_csv(out.path_for("demo_results.csv"), ["target", "dice_1", "dice_2", "median_ned", "seconds"], rows)
    print(f"overlays and demo_results.csv in {out_dir}/ ; try the CLI on {data}/:")
    print(f"  medshot segment --template {data}/template.json --out {out_dir}/seg {data}/targets")
    print(f"  medshot localize --template {data}/template.json --out {out_dir}/loc {data}/targets")
    return 0


COMMANDS = {"demo": cmd_demo}
