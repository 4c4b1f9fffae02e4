"""3D benchmark: medshot volumes vs SimpleITK atlas registration on the evaldata volumes.

For each task one case is the template (its expert label map, and its labels' centroids as
landmarks) and the other cases are targets. Every method carries the same template to the same
targets; reported per task and method: Dice per label, mean Dice, landmark error in mm (template
label centroids carried to the target vs the target's own label centroids, both from expert masks)
and seconds per volume.

Methods: ``medshot`` (weights-free 3D descriptors, carried label map + 3D clean-up: the default),
``medshot-rw`` (plus the 3D random-walker band refinement), ``affine`` and ``bspline`` (SimpleITK
Mattes-MI registration of the same whole volumes, resampled to the same working spacing or coarser;
``bspline`` = affine + B-spline FFD), and ``affine@medshot`` / ``bspline@medshot``, the same
registrations started from medshot's global placement (global search + affine of its coarse stage)
instead of the images' centres of mass. The template's label map and landmarks go through every
correspondence the same way.

Usage::

    python benchmarks/evaldata_3d.py --max-pairs 4                 # quick
    python benchmarks/evaldata_3d.py --tasks hippocampus --max-pairs 14
    python benchmarks/evaldata_3d.py --large                       # peak RSS on a 512x512x300 CT

Skips cleanly (exit 0, one line) when the evaldata folder is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "evaldata"
TASKS = {
    "hippocampus": {"folder": "mr_hippocampus_msd", "centroids": "label_centroids_voxel.csv", "name": "name",
                    "window": None},
    "openkbp": {"folder": "ct_headneck_oar_openkbp", "centroids": "structure_centroids_voxel.csv",
                "name": "structure", "window": (-160.0, 240.0)},
}
METHODS = ("medshot", "medshot-rw", "affine", "bspline", "affine@medshot", "bspline@medshot")


def read_centroids(path: Path, name_col: str) -> dict[str, dict[int, tuple[str, np.ndarray]]]:
    out: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["id"], {})[int(r["label"])] = (r[name_col], np.array([float(r[c]) for c in "ijk"]))
    return out


def cases(task_dir: Path) -> list[str]:
    names = sorted(p.name[:-7] for p in (task_dir / "volumes" / "images").glob("*.nii.gz"))

    def key(n: str):
        digits = "".join(ch for ch in n if ch.isdigit())
        return (int(digits) if digits else 0, n)

    return sorted(names, key=key)


def run_task(task: str, data: Path, max_pairs: int | None, methods: list[str], template_index: int,
             rows: list[dict]) -> None:
    from medshot.evaluate import dice
    from medshot.volume.io3d import load_label_volume, load_volume
    from medshot.volume.pipeline3d import VolumeShot
    from medshot.volume.template3d import Landmark3D, VolumeTemplate

    spec = TASKS[task]
    tdir = data / spec["folder"]
    ids = cases(tdir)
    cent = read_centroids(tdir / "volumes" / spec["centroids"], spec["name"])
    tid = ids[template_index]
    img = tdir / "volumes" / "images" / f"{tid}.nii.gz"
    lab = tdir / "volumes" / "labels" / f"{tid}.nii.gz"
    template = VolumeTemplate(img, lab, window=spec["window"])
    template.labels = {k: v[0] for k, v in sorted(cent[tid].items())}
    template.landmarks = [Landmark3D(f"{k}:{v[0]}", v[1]) for k, v in sorted(cent[tid].items())]
    template.validate()
    targets = [i for i in ids if i != tid][: max_pairs or None]
    t0 = time.perf_counter()
    shot = VolumeShot(template)
    setup = time.perf_counter() - t0
    print(f"[{task}] template {tid}, {len(targets)} targets, template preparation {setup:.1f} s", flush=True)
    for tg in targets:
        vol = load_volume(tdir / "volumes" / "images" / f"{tg}.nii.gz")
        truth = load_label_volume(tdir / "volumes" / "labels" / f"{tg}.nii.gz", vol)
        for method in methods:
            baseline = None if method.startswith("medshot") else method
            previous = shot.refine
            if method == "medshot-rw":
                shot.refine = "randomwalker"
            start = time.perf_counter()
            result = shot.run(vol, baseline=baseline)
            seconds = time.perf_counter() - start
            shot.refine = previous
            row = {"task": task, "template": tid, "target": tg, "method": method, "seconds": round(seconds, 2)}
            for label in template.labels:
                present = (truth == label).any()
                row[f"dice_{label}"] = round(dice(result.label_map == label, truth == label), 4) if present else ""
            errs = []
            for lm in result.landmarks:
                label = int(lm.name.split(":")[0])
                if label in cent.get(tg, {}):
                    true_mm = vol.source_to_world(cent[tg][label][1][None])[0]
                    err = float(np.linalg.norm(lm.xyz - true_mm))
                    row[f"lm_mm_{label}"] = round(err, 2)
                    errs.append(err)
            row["lm_mm_mean"] = round(float(np.mean(errs)), 2) if errs else ""
            dices = [row[f"dice_{k}"] for k in template.labels if row[f"dice_{k}"] != ""]
            row["dice_mean"] = round(float(np.mean(dices)), 4) if dices else ""
            rows.append(row)
            print(f"  {tg:>16} {method:<14} dice {row['dice_mean']!s:<7} lm {row['lm_mm_mean']!s:>6} mm "
                  f"{seconds:6.1f} s", flush=True)


def summarize(rows: list[dict]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == task]
        labels = sorted({int(k[5:]) for r in sub for k in r if k.startswith("dice_") and k[5:].isdigit()})
        n = len({r["target"] for r in sub})
        lines.append(f"\n**{task}** (template {sub[0]['template']}, {n} targets; mean over targets)\n")
        head = ["method"] + [f"Dice {k}" for k in labels] + ["mean Dice", "landmark mm (mean)",
                                                              "landmark mm (median)", "s / volume"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for method in dict.fromkeys(r["method"] for r in sub):
            rs = [r for r in sub if r["method"] == method]

            def mean(key, rs=rs):
                v = [float(r[key]) for r in rs if r.get(key, "") != ""]
                return np.mean(v) if v else float("nan")

            lm = [float(r[k]) for r in rs for k in r if k.startswith("lm_mm_") and k[6:].isdigit() and r[k] != ""]
            cells = [method] + [f"{mean(f'dice_{k}'):.3f}" for k in labels] + [
                f"{mean('dice_mean'):.3f}", f"{np.mean(lm):.1f}" if lm else "-",
                f"{np.median(lm):.1f}" if lm else "-", f"{mean('seconds'):.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Peak memory on a CT-sized synthetic volume
# ------------------------------------------------------------------------------------------------


def make_large_case(folder: Path, shape=(512, 512, 300), spacing=(0.7, 0.7, 1.0)) -> tuple[Path, Path]:
    """Write a synthetic CT-sized template (with labels + landmarks) and target as int16 HU NIfTI."""
    import nibabel as nib

    from medshot.volume.synthetic3d import Phantom3D, Warp3D, grid_affine, landmarks_voxel, sample_phantom
    from medshot.volume.template3d import Landmark3D, VolumeTemplate

    ph = Phantom3D(size=300.0, seed=3)
    t_aff = grid_affine(shape, spacing)
    img, lab = sample_phantom(ph, shape, t_aff, dtype=np.int16, scale=1400.0, offset=-1000.0)
    nib.save(nib.Nifti1Image(img, t_aff), folder / "template.nii.gz")
    nib.save(nib.Nifti1Image(lab, t_aff), folder / "template_labels.nii.gz")
    del img, lab
    warp = Warp3D(np.eye(3) * 1.04, np.array([6.0, -4.0, 5.0]), amplitude=4.0, wavelength=200.0)
    s_aff = grid_affine(shape, (0.75, 0.75, 1.1), center_mm=(5, -5, 10), axcodes="LPS")
    img, _ = sample_phantom(ph, shape, s_aff, warp, dtype=np.int16, scale=1400.0, offset=-1000.0, labels=False)
    nib.save(nib.Nifti1Image(img, s_aff), folder / "target.nii.gz")
    del img
    template = VolumeTemplate(folder / "template.nii.gz", folder / "template_labels.nii.gz", window=(-1000, 400))
    template.labels = {1: "organ 1", 2: "organ 2"}
    template.landmarks = [Landmark3D(n, p) for n, p in zip("abcd", landmarks_voxel(ph, t_aff))]
    template.save(folder / "template.json")
    return folder / "template.json", folder / "target.nii.gz"


def run_large() -> int:
    with tempfile.TemporaryDirectory(prefix="medshot-large-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        template_json, target = make_large_case(folder)
        print(f"wrote a 512x512x300 template and target in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {}
        for command in ("segment", "localize"):
            code = ("import resource, sys, time; from medshot.cli import main; t = time.perf_counter(); "
                    f"rc = main(['{command}', '--template', sys.argv[1], '--out', sys.argv[2], sys.argv[3], "
                    "'--quiet']); "
                    "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
                    "'SECONDS', time.perf_counter() - t); sys.exit(rc)")
            proc = subprocess.run([sys.executable, "-c", code, str(template_json), str(folder / command),
                                   str(target)], capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_RSS_MB")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                return 1
            parts = line[0].split()
            results[command] = (float(parts[1]), float(parts[3]))
            print(f"medshot {command} on 512x512x300: peak RSS {float(parts[1]):.0f} MB, "
                  f"{float(parts[3]):.0f} s", flush=True)
        ok = all(mb < 8192 for mb, _ in results.values())
        print("within the 8 GB budget" if ok else "OVER the 8 GB budget")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="evaldata folder (default: ../shared/evaldata)")
    p.add_argument("--tasks", default="hippocampus,openkbp", help="comma-separated: hippocampus, openkbp")
    p.add_argument("--methods", default="medshot,medshot-rw,affine,bspline",
                   help=f"comma-separated from {', '.join(METHODS)} (default: the first four)")
    p.add_argument("--max-pairs", type=int, default=None, help="at most N targets per task (quick runs)")
    p.add_argument("--template-index", type=int, default=0, help="which case (sorted by id) is the template")
    p.add_argument("--out", type=Path, default=None, help="write per-pair rows (CSV) and the table (Markdown) here")
    p.add_argument("--large", action="store_true", help="measure peak RSS on a synthetic 512x512x300 CT instead")
    args = p.parse_args(argv)
    if args.large:
        return run_large()
    if not args.data.exists():
        print(f"evaldata not found at {args.data}; skipping")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}")
    rows: list[dict] = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if task not in TASKS:
            p.error(f"unknown task '{task}'")
        if not (args.data / TASKS[task]["folder"] / "volumes").exists():
            print(f"[{task}] no volumes under {args.data}; skipping")
            continue
        run_task(task, args.data, args.max_pairs, methods, args.template_index, rows)
    if not rows:
        return 0
    table = summarize(rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.out / "pairs.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows(rows)
        (args.out / "table.md").write_text(table + "\n")
        (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
