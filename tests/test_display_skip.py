"""Without a display and without Xvfb the napari tests skip with the reason; they do not abort pytest.

Qt aborts the process ("Fatal Python error: Aborted", no summary) when it opens a window with
nowhere to draw; ``conftest.py`` skips the tests that would, and ``.ci/run`` installs Xvfb so that
they run there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("napari")

TESTS = Path(__file__).resolve().parent


def test_napari_tests_skip_cleanly_without_xvfb(tmp_path):
    # A PATH holding only Python's own folder hides Xvfb from pytest-xvfb; DISPLAY and WAYLAND_DISPLAY unset.
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PATH"] = str(Path(sys.executable).parent)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(TESTS / "test_napari_reader.py"), "-k", "manifest or raster_formats or dicom"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert "Fatal Python error" not in out
    assert proc.returncode == 0, out[-3000:]
    assert "pytest-xvfb could not start Xvfb" in out and " skipped" in out and " passed" in out
