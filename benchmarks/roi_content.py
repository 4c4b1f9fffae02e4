"""Share of the template's informative content inside its region of interest, for every 2D development template.

Where the constant ``CorrespondOptions.min_informative`` comes from: a region holding less than that
share is grown (a landmark annotated in a flat region has nothing around it to anchor a
correspondence). This prints the smallest share per task, so the constant can be checked to leave
every development template's region as it is.

Usage::

    python benchmarks/roi_content.py [--data ../shared/evaldata]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.runner import runner_for
from medshot.pipeline import OneShot

sys.path.insert(0, str(Path(__file__).parent))
from evaldata_2d import DEFAULT_DATA, TASKS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}: skipped")
        return
    print("| task | templates | smallest share | median share |\n|---|---|---|---|")
    for task, folder in TASKS.items():
        dataset = discover_dataset(args.data / folder)
        shares = []
        runner = runner_for(dataset.kind)
        for case in dataset.cases:
            shot = OneShot(runner.make_template(case, dataset.label_names))
            side = shot._first.side
            shares.append(float(side.informative[side.roi].sum() / side.informative.sum()))
        print(f"| {task} | {len(shares)} | {min(shares):.3f} | {np.median(shares):.3f} |", flush=True)


if __name__ == "__main__":
    main()
