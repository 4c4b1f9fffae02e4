"""Issue 20's speed ratios, all measured in one run on one machine.

1. **Volumes**: OpenKBP and hippocampus volumes, s/volume with this tree against the code of
   ``--old-commit`` (default 9791376, the last commit before issue 20's work), on the same pairs (the
   first case of the report half as template, the next ``--volumes`` cases as targets), run one after
   the other in fresh processes; the mean Dice of both on those pairs is printed beside (the speed-ups
   of items 1-3 leave results identical; the covering fine-stage box moves them within tolerance).
2. **2D tasks**: every 2D task of ``evaldata_2d.py``, medshot against the SimpleITK B-spline baseline,
   s/target on the same pairs (first report-half case as template, the next ``--images`` as targets).
3. **Several templates**: ``--templates`` HC18 images (cycling through the cases that are not
   targets) with ``top_k=3`` against one template, s/target.
4. **Batches**: ``medshot segment`` on ``--batch`` HC18 targets with default settings (``--workers
   auto``) against ``--workers 1``, wall seconds, and whether their outputs are byte-identical.

Each measurement runs in a subprocess of its own whose ``PYTHONPATH`` names the code it measures (this
tree, or a checkout of ``--old-commit``: ``git worktree add`` into a temporary folder, removed at the
end, unless ``--old-checkout DIR`` gives one). Run on an otherwise idle machine::

    python benchmarks/speed.py --split report > speed.md

``--tiny`` runs every step on small synthetic data (seconds; the old code is this tree unless
``--old-checkout`` says otherwise): it checks the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "evaldata"
VOLUME_TASKS = {"openkbp": ("ct_headneck_oar_openkbp/volumes", (-160.0, 240.0)),
                "hippocampus": ("mr_hippocampus_msd/volumes", None)}
SECTIONS = ("volumes", "images", "several", "batch")
IMAGE_TASKS = {"hc18": "us_fetal_head_hc18", "hippocampus": "mr_hippocampus_msd/slices2d",
               "openkbp_axial": "ct_headneck_oar_openkbp/slices2d_axial",
               "openkbp_sagittal": "ct_headneck_oar_openkbp/slices2d_sagittal",
               "acdc": "cardiac_mri_sax_acdc", "drishti": "fundus_opticdisc_cup_drishtigs",
               "ceph": "xray_ceph_landmarks_hamedan"}


# ------------------------------------------------------------------------------------------------
# The measuring side: runs with the measured code first on sys.path (it uses only API both have).
# ------------------------------------------------------------------------------------------------

def _worker(job: dict) -> dict:
    """Time one job in this process: ``single`` (one template, targets; medshot or a baseline) or ``several``."""
    import numpy as np

    from medshot.evaluation.dataset import discover_dataset
    from medshot.evaluation.runner import make_template, runner_for

    dataset = discover_dataset(job["folder"])
    runner = runner_for(dataset.kind, None if job.get("window") is None else tuple(job["window"]))

    case = dataset.case
    templates = [make_template(case(n), dataset.label_names, runner.window) for n in job["templates"]]
    top_k = job.get("top_k")
    shot = runner.make_shot(templates if len(templates) > 1 else templates[0], "classical", "classical")
    if top_k is not None:
        shot.top_k = top_k
    seconds, dice, failed = [], [], []
    landmarks = dataset.has_landmarks and not dataset.has_masks
    for name in job["targets"]:
        target = case(name)
        start = time.perf_counter()
        try:
            prediction = runner.predict(shot, target, landmarks, not landmarks, job.get("baseline"))
        except Exception as exc:  # noqa: BLE001 - as `medshot evaluate`: a failing pair scores 0, the run goes on
            seconds.append(time.perf_counter() - start)
            failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200])
            dice.append(0.0)
            continue
        seconds.append(time.perf_counter() - start)
        if prediction.label_map is not None and target.mask is not None:
            truth = runner.truth(target)
            labels = [int(v) for v in np.unique(truth) if v]
            both = [2 * np.sum((prediction.label_map == k) & (truth == k)) /
                    max(1, np.sum(prediction.label_map == k) + np.sum(truth == k)) for k in labels]
            dice.append(float(np.mean(both)) if both else 1.0)
    return {"seconds": seconds, "dice": dice, "failed": failed}


def measure(code: Path, job: dict) -> dict:
    """``job`` run by :func:`_worker` in a fresh process importing medshot from ``code``."""
    env = dict(os.environ, PYTHONPATH=str(code))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", fh.name], env=env,
                             cwd=tempfile.gettempdir(), capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if out.returncode != 0:
        raise RuntimeError(f"{job['name']} with {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# The planning side.
# ------------------------------------------------------------------------------------------------

def _cases(folder: Path, split: str) -> list[str]:
    from medshot.evaluation.dataset import discover_dataset
    from medshot.evaluation.plan import split_cases

    return list(split_cases(discover_dataset(folder).names, split))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _failures(measured: dict) -> str:
    """The failed pairs of one measurement (they count in the seconds, to the failure, and score 0)."""
    failed = measured.get("failed", [])
    return f"{len(failed)}: " + "; ".join(failed) if failed else "0"


def _row(*cells) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def volumes(folders: dict, old: Path, n: int, split: str) -> list[str]:
    lines = ["| volumes | pairs | s/volume old | s/volume new | old / new | mean Dice old | mean Dice new "
             "| failed old | failed new |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for task, (folder, window) in folders.items():
        names = _cases(folder, split)
        job = {"name": task, "folder": str(folder), "window": window, "templates": names[:1],
               "targets": names[1:1 + n]}
        before, after = measure(old, job), measure(ROOT, job)
        a, b = _mean(before["seconds"]), _mean(after["seconds"])
        lines.append(_row(task, len(job["targets"]), a, b, a / b, _mean(before["dice"]), _mean(after["dice"]),
                          _failures(before), _failures(after)))
    return lines


def images(folders: dict, n: int, split: str) -> list[str]:
    lines = ["| 2D task | targets | s/target medshot | s/target B-spline | B-spline / medshot | failed medshot "
             "| failed B-spline |", "|---|---:|---:|---:|---:|---|---|"]
    for task, folder in folders.items():
        names = _cases(folder, split)
        job = {"name": task, "folder": str(folder), "templates": names[:1], "targets": names[1:1 + n]}
        ours, bspline = measure(ROOT, job), measure(ROOT, job | {"baseline": "bspline"})
        a, b = _mean(ours["seconds"]), _mean(bspline["seconds"])
        lines.append(_row(task, len(job["targets"]), a, b, b / a, _failures(ours), _failures(bspline)))
    return lines


def several(folder: Path, k: int, n: int) -> list[str]:
    """``k`` templates fused with top-k 3 against the first of them alone, on ``n`` other cases. A task has
    fewer than ``k + n`` cases (HC18: 10), so the templates cycle through the cases that are not targets:
    repeated templates cost what distinct ones do."""
    names = _cases(folder, "all")
    if len(names) < n + 1:
        raise SystemExit(f"{folder} has {len(names)} cases; {n} targets and a template need {n + 1}")
    pool, targets = names[:-n], names[-n:]
    templates = [pool[i % len(pool)] for i in range(k)]
    job = {"name": "top-k", "folder": str(folder), "templates": templates, "targets": targets}
    fused, single = measure(ROOT, job | {"top_k": 3}), measure(ROOT, job | {"templates": templates[:1]})
    a, b = _mean(fused["seconds"]), _mean(single["seconds"])
    return ["| several templates | targets | s/target | one template s/target | ratio |", "|---|---:|---:|---:|---:|",
            _row(f"{k} templates ({len(set(templates))} distinct), top-k 3", len(targets), a, b, a / b)]


def batch(folder: Path, n: int) -> list[str]:
    from medshot.evaluation.dataset import discover_dataset

    dataset = discover_dataset(folder)
    names = dataset.names
    first = dataset.case(names[0])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "targets").mkdir()
        for i in range(n):  # the batch: the other cases, repeated as needed, as copies
            source = dataset.case(names[1 + i % (len(names) - 1)]).image
            # not links: medshot takes paths that resolve to the same file as one target, so 40 links to
            # the 9 other development cases were a batch of 9 (the README's 1.36 before 2026-12-06)
            shutil.copy(source, tmp / "targets" / f"t{i:03d}{''.join(source.suffixes)}")
        medshot = [sys.executable, "-m", "medshot.cli"]
        subprocess.run([*medshot, "template", str(first.image), "--mask", str(first.mask), "--out",
                        str(tmp / "t.json")], env=env, check=True, capture_output=True)
        wall = {}
        for name, extra in (("auto", []), ("serial", ["--workers", "1"])):
            start = time.perf_counter()
            subprocess.run([*medshot, "segment", "--template", str(tmp / "t.json"), "--out", str(tmp / name),
                            str(tmp / "targets"), "--quiet", "--no-dicom-out", *extra], env=env, check=True,
                           capture_output=True)
            wall[name] = time.perf_counter() - start
        same = all((tmp / "auto" / p.name).read_bytes() == p.read_bytes()
                   for p in (tmp / "serial").glob("*_mask.*"))
    return ["| batch | targets | default (--workers auto) s | --workers 1 s | serial / default | masks identical |",
            "|---|---:|---:|---:|---:|---|",
            _row("HC18", n, wall["auto"], wall["serial"], wall["serial"] / wall["auto"], same)]


def tiny_data(root: Path) -> tuple[dict, dict, Path]:
    """Small synthetic datasets in the layout of evaldata: 2D phantoms and 3D phantom volumes."""
    import nibabel as nib
    import numpy as np

    from medshot.data.write import save_png
    from medshot.synthetic import make_phantom, random_warp
    from medshot.synthetic3d import Phantom3D, Warp3D, grid_affine, sample_phantom

    flat = root / "images2d"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    phantom = make_phantom((64, 72))
    for i in range(6):
        case, _ = random_warp(phantom, seed=i + 1)
        save_png(flat / "images" / f"c{i}.png", (np.clip(case.image, 0, 1) * 255).astype(np.uint8))
        save_png(flat / "masks" / f"c{i}.png", case.mask.astype(np.uint8))
    deep = root / "volumes"
    (deep / "images").mkdir(parents=True)
    (deep / "labels").mkdir()
    body = Phantom3D(60.0, seed=1)
    for i in range(3):
        affine = grid_affine((28, 28, 22), (2.4, 2.4, 2.8))
        warp = Warp3D(np.eye(3) * (1 + 0.02 * i), np.array([1.0 * i, -1.0, 0.5]), 0.5, 40.0)
        array, labels = sample_phantom(body, (28, 28, 22), affine, warp)
        nib.save(nib.Nifti1Image(array.astype(np.float32), affine), deep / "images" / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), deep / "labels" / f"v{i}.nii.gz")
    return {"tiny-volumes": (deep, None)}, {"tiny-2d": flat}, flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--split", choices=["tune", "report", "all"], default="report")
    p.add_argument("--old-commit", default="9791376")
    p.add_argument("--old-checkout", default=None, help="a checkout of --old-commit (default: a temporary worktree)")
    p.add_argument("--volumes", type=int, default=4, help="targets per volume task")
    p.add_argument("--images", type=int, default=5, help="targets per 2D task")
    p.add_argument("--templates", type=int, default=20, help="templates fused with top-k 3")
    p.add_argument("--several-targets", type=int, default=2, help="targets of the several-template run")
    p.add_argument("--batch", type=int, default=40, help="targets in the batch")
    p.add_argument("--tiny", action="store_true", help="small synthetic data: checks the script only")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    args = p.parse_args(argv)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    if unknown := sorted(set(sections) - set(SECTIONS)):
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.worker:
        print(json.dumps(_worker(json.loads(Path(args.worker).read_text()))))
        return 0
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        worktree = None
        if args.old_checkout:
            old = Path(args.old_checkout).resolve()
        elif args.tiny or "volumes" not in sections:  # only the volumes compare with the old code
            old = ROOT
        else:
            worktree = old = Path(tmp) / "old"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.old_commit],
                           check=True, capture_output=True)
        try:
            if args.tiny:
                vol, img, hc18 = tiny_data(Path(tmp) / "data")
                args.volumes, args.images, args.templates, args.several_targets, args.batch = 1, 1, 4, 1, 3
                split = "all"
            else:
                data = Path(args.data)
                if not data.is_dir():
                    print(f"evaldata not found at {data}; nothing to do")
                    return 0
                vol = {t: (data / f, w) for t, (f, w) in VOLUME_TASKS.items()}
                img = {t: data / f for t, f in IMAGE_TASKS.items()}
                hc18, split = data / IMAGE_TASKS["hc18"], args.split
            print(f"`python benchmarks/speed.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
                  f"(old code: {'this tree' if old == ROOT else args.old_commit}; "
                  f"{os.cpu_count()} cores)\n")
            run = {"volumes": lambda: volumes(vol, old, args.volumes, split),
                   "images": lambda: images(img, args.images, split),
                   "several": lambda: several(hc18, args.templates, args.several_targets),
                   "batch": lambda: batch(hc18, args.batch)}
            for name in sections:
                print("\n".join(run[name]()) + "\n", flush=True)
        finally:
            if worktree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
