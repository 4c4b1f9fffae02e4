"""Wall time of one ``medshot segment`` batch: serial, ``--workers 2`` and a 2-worker Dask LocalCluster.

40 synthetic targets (warped phantoms, 224x192 px) and one template, made here. Each way runs the
command line in a fresh process (imports and worker start-up included; the Dask cluster is started
beforehand, as an existing cluster would be), and all three must give identical masks and tables
(but for the ``seconds`` column)::

    python benchmarks/bench_workers.py [--targets 40] [--work-size 128] [--out /tmp/bench_workers]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_data(root: Path, n: int) -> tuple[Path, Path]:
    from medshot.cli import main
    from medshot.synthetic import make_phantom, random_warp

    phantom = make_phantom()
    Image.fromarray((phantom.image * 255).astype(np.uint8)).save(root / "template.png")
    Image.fromarray(phantom.mask).save(root / "template_mask.png")
    targets = root / "targets"
    targets.mkdir()
    made, seed = 0, 0
    while made < n:
        seed += 1
        try:
            case, _ = random_warp(phantom, seed=seed)
        except np.linalg.LinAlgError:  # a fold in this random warp: its truth cannot be inverted, take the next
            continue
        made += 1
        Image.fromarray((case.image * 255).astype(np.uint8)).save(targets / f"case{made:03d}.png")
    assert main(["template", str(root / "template.png"), "--mask", str(root / "template_mask.png"),
                 "--out", str(root / "template.json")]) == 0
    return root / "template.json", targets


def segment(template: Path, targets: Path, out: Path, work_size: int, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medshot.cli", "segment", "--template", str(template), "--out", str(out),
                    "--work-size", str(work_size), "--quiet", *extra, str(targets)], env=env, check=True)
    return time.perf_counter() - start


def outputs(out: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    masks = {p.name: np.array(Image.open(p)) for p in sorted(out.glob("*_mask.png"))}
    with open(out / "results.csv", newline="") as fh:
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
    return masks, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--work-size", type=int, default=128)
    parser.add_argument("--out", default="/tmp/bench_workers")
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    template, targets = make_data(root, args.targets)

    # --workers 1: the default became --workers auto (2 processes here), which made this "serial" run
    # parallel until 2026-12-06
    times = {"serial": segment(template, targets, root / "serial", args.work_size, ["--workers", "1"])}
    times["--workers 2"] = segment(template, targets, root / "workers", args.work_size, ["--workers", "2"])
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        times["dask 2 workers"] = segment(template, targets, root / "dask", args.work_size,
                                          ["--scheduler", cluster.scheduler_address])

    reference = outputs(root / "serial")
    assert len(reference[0]) == args.targets
    for name, folder in (("--workers 2", "workers"), ("dask 2 workers", "dask")):
        masks, rows = outputs(root / folder)
        assert list(masks) == list(reference[0]) and rows == reference[1], f"{name} differs from serial"
        for k in masks:
            assert np.array_equal(masks[k], reference[0][k]), f"{name}: {k} differs from serial"
    print(f"{args.targets} targets, work size {args.work_size}, {os.cpu_count()} CPUs; identical masks and tables")
    print(f"{'way':<16} {'wall s':>8} {'serial / way':>13}")
    for name, seconds in times.items():
        print(f"{name:<16} {seconds:8.1f} {times['serial'] / seconds:13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
