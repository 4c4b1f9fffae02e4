"""Peak memory of medshot on a CT-sized volume: a synthetic 512x512x300 template and target.

Writes a phantom CT (int16 HU) with two labelled organs and four landmarks, then runs
``medshot segment`` and ``medshot localize`` in a fresh process each and reports the peak
resident set size (``ru_maxrss``) and the seconds; exits 1 when either exceeds the 8 GB budget.
(The 3D accuracy benchmark is ``benchmarks/evaldata_3d.py``, a driver of ``medshot evaluate``.)

``--where`` runs ``medshot segment`` in this process instead, sampling the resident set size every
50 ms with the innermost medshot functions running at that moment, and prints which step sets the peak
and the steps where it grows most.

Usage::

    python benchmarks/memory_3d.py
    python benchmarks/memory_3d.py --where
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_large_case(folder: Path, shape=(512, 512, 300), spacing=(0.7, 0.7, 1.0)) -> tuple[Path, Path]:
    """Write a synthetic CT-sized template (with labels + landmarks) and target as int16 HU NIfTI."""
    import nibabel as nib

    from medshot.data.annotations import Landmark
    from medshot.data.template import Template
    from medshot.synthetic3d import Phantom3D, Warp3D, grid_affine, landmarks_voxel, sample_phantom

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
    template = Template(folder / "template.nii.gz", folder / "template_labels.nii.gz", window=(-1000, 400))
    template.labels = {1: "organ 1", 2: "organ 2"}
    points = template.image.source_to_index(landmarks_voxel(ph, t_aff))  # the file's voxels -> array indices
    template.landmarks = [Landmark(n, p) for n, p in zip("abcd", points)]
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


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))


def where_large() -> int:
    """Which step of ``medshot segment`` on the 512x512x300 CT sets its peak resident memory (Linux)."""
    import threading
    import traceback

    from medshot.cli import main

    main_thread = threading.get_ident()
    samples: list[tuple[float, float, str]] = []  # seconds, MB, innermost medshot frames
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            frames = traceback.extract_stack(sys._current_frames().get(main_thread))
            steps = [f"{Path(f.filename).stem}.{f.name}" for f in frames if "/medshot/" in f.filename]
            samples.append((time.perf_counter(), _rss_mb(), " > ".join(steps[-3:])))
            time.sleep(0.05)

    with tempfile.TemporaryDirectory(prefix="medshot-large-") as tmp:
        template_json, target = make_large_case(Path(tmp))
        watcher = threading.Thread(target=sample, daemon=True)
        start = time.perf_counter()
        watcher.start()
        rc = main(["segment", "--template", str(template_json), "--out", str(Path(tmp) / "out"), str(target),
                   "--quiet"])
        done.set()
        watcher.join()
    seconds, peak, step = max(samples, key=lambda s: s[1])
    print(f"medshot segment on 512x512x300 (in this process, exit {rc}): peak RSS {peak:.0f} MB at "
          f"{seconds - start:.0f} s of {time.perf_counter() - start:.0f} s, in {step}")
    highest: dict[str, float] = {}
    for _, mb, at in samples:
        highest[at] = max(highest.get(at, 0.0), mb)
    print("highest RSS per step (MB):")
    for at, mb in sorted(highest.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {mb:6.0f}  {at}")
    return rc


if __name__ == "__main__":
    raise SystemExit(where_large() if "--where" in sys.argv[1:] else run_large())
