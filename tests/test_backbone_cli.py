"""End to end: ``medshot localize/segment --backbone <name> --weights <tiny dir>`` for every family, offline,
in a fresh process. With random weights the results are meaningless: this checks the plumbing and files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_backbones import TINY, save_tiny  # noqa: E402

from medshot.cli import main  # noqa: E402
from medshot.synthetic import random_warp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

RUNNER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from medshot.cli import main
codes = []
for args in json.loads(sys.argv[1]):
    start = time.perf_counter()
    codes.append(main(args))
    print(f"TIMING {args[0]} {args[2]} {time.perf_counter() - start:.2f}s", file=sys.stderr)
print("CODES", json.dumps(codes))
"""


def test_localize_and_segment_with_each_backbone(tmp_path, template_files, phantom):
    image, mask, landmarks = template_files
    template = tmp_path / "template.json"
    assert main(["template", str(image), "--mask", str(mask), "--landmarks", str(landmarks),
                 "--out", str(template)]) == 0
    targets = tmp_path / "targets"
    targets.mkdir()
    case, _ = random_warp(phantom, seed=1)
    Image.fromarray((case.image * 255).astype(np.uint8)).save(targets / "case1.png")

    runs = []  # (backbone, command, output folder, argv)
    common = ["--template", str(template), "--work-size", "64", "--quiet", str(targets)]
    extra = {"dinov2": ["--stride", "7", "--log-bin"], "dinov3": ["--facet", "key", "--layer", "2"]}
    for family, (name, *_rest) in TINY.items():
        weights = save_tiny(family, tmp_path / "w" / family)
        out = tmp_path / "out" / name
        runs.append((name, "localize", out, ["localize", "--backbone", name, "--weights", str(weights),
                                             "--out", str(out), *extra.get(family, []), *common]))
    try:
        import diffusers  # noqa: F401
        from test_backbone_sd import save_tiny_sd

        sd = save_tiny_sd(tmp_path / "w" / "sd15")
        runs.append(("sd15", "localize", tmp_path / "out" / "sd15",
                     ["localize", "--backbone", "sd15", "--weights", str(sd), "--layer", "1",
                      "--out", str(tmp_path / "out" / "sd15"), *common]))
    except ImportError:
        pass  # diffusers is optional; its own tests skip too
    out = tmp_path / "seg"
    runs.append(("dinov2_vits14_reg", "segment", out, ["segment", "--backbone", "dinov2_vits14_reg", "--weights",
                                                       str(tmp_path / "w" / "dinov2_reg"), "--out", str(out),
                                                       *common]))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([r[3] for r in runs])], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("TIMING")))
    codes = json.loads(proc.stdout.split("CODES", 1)[1])
    assert codes == [0] * len(runs), proc.stderr[-3000:]

    for name, command, out, _ in runs:
        if command == "localize":
            with open(out / "landmarks.csv") as fh:
                rows = list(csv.DictReader(fh))
            assert len(rows) == 4, name
            xy = np.array([[float(r["x"]), float(r["y"])] for r in rows])
            assert np.isfinite(xy).all(), name
        else:
            written = np.array(Image.open(out / "case1_mask.png"))
            assert written.shape == case.image.shape, name
            assert (out / "case1_overlay.png").exists() and (out / "results.csv").exists(), name
