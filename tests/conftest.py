"""Shared fixtures: synthetic cases with exact truth, and the real evaluation data when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medshot.data.write import save_png
from medshot.synthetic import LANDMARK_NAMES, make_phantom

EVALDATA = Path(os.environ.get("MEDSHOT_EVALDATA", Path(__file__).resolve().parents[2] / "shared" / "evaldata"))


@pytest.fixture(scope="session")
def phantom():
    return make_phantom()


@pytest.fixture()
def template_files(tmp_path, phantom):
    """A template image, mask and landmark CSV written to disk; returns their paths."""
    image = tmp_path / "template.png"
    mask = tmp_path / "template_mask.png"
    csv = tmp_path / "landmarks.csv"
    save_png(image, (phantom.image * 255).astype(np.uint8))
    save_png(mask, phantom.mask)
    csv.write_text("name,x,y\n" + "".join(f"{n},{x:.3f},{y:.3f}\n"
                                          for n, (x, y) in zip(LANDMARK_NAMES, phantom.landmarks_xy)))
    return image, mask, csv


def evaldata_task(relative: str) -> Path:
    path = EVALDATA / relative
    if not (path / "images").is_dir():
        pytest.skip(f"evaluation data not present at {path}")
    return path
