"""Tune-half sweep of the landmark re-matching rule's constants (``match_points(keep_gain, min_distinct)``).

Cephalogram landmarks (every tune-half image the template in turn) and the label centroids of the
hippocampus and ACDC tune halves (the first five templates each, derived landmarks); prints the median
and mean NED per setting. The report half is never read. Usage::

    python benchmarks/landmark_keep_rule.py
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

import medshot
from medshot.data.annotations import Landmark
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.metrics import normalized_distance
from medshot.evaluation.plan import split_cases
from medshot.evaluation.runner import Runner
from medshot.match import points

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaldata_2d import DEFAULT_DATA, TASKS  # noqa: E402

SETTINGS = [(0.0, 0.0), (0.25, 0.1), (0.1, 0.05), (0.25, 0.0), (0.0, 0.1)]  # (keep_gain, min_distinct); (0, 0): no rule


def centroids(label_map: np.ndarray) -> dict[str, np.ndarray]:
    return {f"centroid {v}": np.array(ndimage.center_of_mass(label_map == v)) for v in np.unique(label_map) if v}


def main() -> int:
    data = Path(os.environ.get("MEDSHOT_EVALDATA", str(DEFAULT_DATA)))
    if not data.is_dir():
        print(f"evaldata not found at {data}; skipping")
        return 0
    warnings.simplefilter("ignore")
    defaults = list(points.match_points.__defaults__)
    runner = Runner("2d")
    for task in ("ceph", "hippocampus", "acdc"):
        dataset = discover_dataset(data / TASKS[task])
        names = split_cases(dataset.names, "tune")
        errors: dict[tuple, list[float]] = {s: [] for s in SETTINGS}
        for t_name in names if task == "ceph" else names[:5]:
            template = runner.make_template(dataset.case(t_name), dataset.label_names)
            if template.mask is not None:
                template.landmarks = [Landmark(k, p) for k, p in centroids(template.mask).items()]
            shot = medshot.OneShot(template)
            for g_name in (n for n in names if n != t_name):
                case = dataset.case(g_name)
                stage, prepared, corr = shot.correspond(case.image)
                truth = runner.truth_points(case) if task == "ceph" else centroids(runner.truth(case))
                for setting in SETTINGS:
                    points.match_points.__defaults__ = tuple(defaults[:-2] + list(setting))
                    found = shot.carry(stage, prepared, corr, landmarks=True, masks=False).landmarks
                    errors[setting] += [float(normalized_distance(lm.point, truth[lm.name], prepared.image.shape))
                                        for lm in found if lm.name in truth]
        points.match_points.__defaults__ = tuple(defaults)
        for setting, e in errors.items():
            print(f"{task} keep_gain={setting[0]} min_distinct={setting[1]}: median NED {np.median(e):.4f}, "
                  f"mean {np.mean(e):.4f} (n={len(e)})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
