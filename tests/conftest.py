"""Shared fixtures: synthetic cases with exact truth, and the real evaluation data when present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from medshot.data.write import save_png
from medshot.synthetic import LANDMARK_NAMES, make_phantom

# Fixtures of the tests that open Qt windows (napari draws with OpenGL): they need a display, as do
# tests marked ``display``.
DISPLAY_FIXTURES = {"qtbot", "make_napari_viewer"}


def display_problem(config: pytest.Config) -> str | None:
    """Why tests that open windows cannot run here (Linux without a display), else None.

    pytest-xvfb starts Xvfb and sets ``DISPLAY`` in its ``pytest_configure`` when Xvfb is installed;
    without Xvfb it does nothing, and Qt then aborts the whole process ("Fatal Python error:
    Aborted") on the first window, with no summary.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    how = "apt-get install xvfb (as .ci/run does), or run with a display"
    if not config.pluginmanager.hasplugin("xvfb"):
        return f"no display: DISPLAY is unset and pytest-xvfb is not installed; pip install pytest-xvfb and {how}"
    return f"no display: DISPLAY is unset and pytest-xvfb could not start Xvfb (not on PATH); {how}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = display_problem(config)
    if problem is None:
        return
    skip = pytest.mark.skip(reason=problem)
    for item in items:
        if item.get_closest_marker("display") or DISPLAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


EVALDATA = Path(os.environ.get("MEDSHOT_EVALDATA", Path(__file__).resolve().parents[2] / "shared" / "evaldata"))


@pytest.fixture(autouse=True)
def serial_batches(request, monkeypatch):
    """``--workers auto`` (the CLI's default) runs batches here, one target after another, in tests: many
    tests patch this process (a flaky segmenter, a failing writer) and spawned workers would not see it.
    Tests marked ``auto_workers`` get the real choice; ``--workers N`` is never changed."""
    if request.node.get_closest_marker("auto_workers") is None:
        monkeypatch.setattr("medshot.cli.workers.auto_workers", lambda targets, ndim: 1)


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
