"""The layout the docs promise (docs/architecture.md): imports flow one way, modules stay small, ruff is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 420  # "about 400": one job per module


def test_layers_import_one_way():
    # the contract in .importlinter: cli -> napari -> evaluation -> pipeline -> {segment, match, features}
    # -> models -> data -> core
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(config_filename='.importlinter'))"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_no_module_is_too_long():
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
               for p in (ROOT / "medshot").rglob("*.py")}
    assert not {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES}


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "medshot", "tests", "benchmarks", "docs"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
