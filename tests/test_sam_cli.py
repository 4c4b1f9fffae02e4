"""`medshot segment` with SAM end to end, in fresh subprocesses with HF_HUB_OFFLINE=1 (tiny random weights)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam_tiny import save_tiny  # noqa: E402

from medshot.data.template import Template  # noqa: E402
from medshot.data.write import save_png  # noqa: E402
from medshot.synthetic import make_phantom, random_warp  # noqa: E402


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Template JSON, a warped target PNG of another size and a tiny save_pretrained folder."""
    root = tmp_path_factory.mktemp("sam_cli")
    phantom = make_phantom()
    save_png(root / "t.png", (phantom.image * 255).astype(np.uint8))
    save_png(root / "t_mask.png", phantom.mask)
    Template.build(root / "t.png", root / "t_mask.png").save(root / "T.json")
    target, _ = random_warp(phantom, seed=4, out_shape=(176, 200))
    save_png(root / "target.png", (target.image * 255).astype(np.uint8))
    save_tiny(root / "tiny")
    return root


def _medshot(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "medshot.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def _check_outputs(out: Path, target: Path) -> None:
    shape = np.asarray(Image.open(target)).shape[:2]
    mask = np.asarray(Image.open(out / "target_mask.png"))
    assert mask.shape == shape
    assert set(np.unique(mask)) <= {0, 1, 2}
    assert (out / "target_overlay.png").is_file()
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["label"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_segment_with_sam_backbone_and_segmenter(case):
    # One SAM model serves both: the backbone's encoder pass is reused by the segmenter.
    res = _medshot(["segment", "--template", "T.json", "--backbone", "sam_vit_b", "--weights", "tiny",
                    "--segmenter", "sam_vit_b", "--segmenter-weights", "tiny", "--work-size", "96",
                    "--out", "out_shared", "target.png"], case)
    assert res.returncode == 0, res.stderr
    _check_outputs(case / "out_shared", case / "target.png")


def test_missing_weights_is_a_one_line_user_error(case, monkeypatch, capsys):
    # In-process (a third interpreter start costs more than the test): nothing cached, offline.
    from medshot.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("medshot.models.weights.cached_snapshot", lambda repo_id: None)
    monkeypatch.chdir(case)
    code = main(["segment", "--template", "T.json", "--segmenter", "slimsam_50", "--out", "out_missing",
                 "target.png", "--quiet", "--work-size", "64"])
    assert code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medshot: error:")]
    assert len(error) == 1
    assert "nielsr/slimsam-50-uniform" in error[0] and "hf download" in error[0]
    assert "--segmenter classical" in error[0]
    assert not any((case / "out_missing").glob("*"))  # nothing half-written
