"""Make the two napari screenshots in docs/ from synthetic data (run from the repository root).

    python docs/napari_screenshots.py

Needs ``pip install "medshot[napari]"`` and a display or Xvfb (``medshot annotate --screenshot``
starts one). The template and targets are the demo's phantom; target_3 has its right notch hidden
under a blob, so that one landmark is found with less confidence.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from medshot.data.write import save_png, write_csv
from medshot.synthetic import LANDMARK_NAMES, make_phantom, random_warp

DOCS = Path(__file__).resolve().parent


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="medshot-shots-"))
    source = make_phantom()
    save_png(work / "template.png", (source.image * 255).astype(np.uint8))
    save_png(work / "template_mask.png", source.mask)
    write_csv(work / "landmarks.csv", ["name", "x", "y"],
              [[n, float(x), float(y)] for n, (x, y) in zip(LANDMARK_NAMES, source.landmarks_xy)])
    (work / "names.csv").write_text("label,name\n1,organ A\n2,organ B\n")
    targets = work / "targets"
    targets.mkdir()
    for seed in (1, 2, 3):
        case = random_warp(source, seed=seed)[0]
        image = case.image.copy()
        if seed == 3:
            x, y = case.landmarks_xy[2]
            yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
            image[(xx - x) ** 2 + (yy - y) ** 2 < 24**2] = 0.6
        save_png(targets / f"target_{seed}.png", (image * 255).astype(np.uint8))
    medshot = [sys.executable, "-m", "medshot.cli"]
    subprocess.run([*medshot, "template", str(work / "template.png"), "--mask", str(work / "template_mask.png"),
                    "--landmarks", str(work / "landmarks.csv"), "--label-names", str(work / "names.csv"),
                    "--out", str(work / "template.json")], check=True)
    subprocess.run([*medshot, "annotate", "--template", str(work / "template.json"),
                    "--screenshot", str(DOCS / "napari_template.png")], check=True)
    subprocess.run([*medshot, "annotate", "--template", str(work / "template.json"), "--targets", str(targets),
                    "--out", str(work / "review"), "--screenshot", str(DOCS / "napari_review.png")], check=True)


if __name__ == "__main__":
    main()
