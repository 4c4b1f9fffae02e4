"""The run panel (background worker, result layers, review table, corrections, cancel) and ``medshot annotate``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_support import open_panel, register_plugin  # noqa: E402
from PIL import Image  # noqa: E402

from medshot.cli import main  # noqa: E402
from medshot.data.markups import read_markups  # noqa: E402
from medshot.data.write import save_png  # noqa: E402
from medshot.napari.layers import frame_of  # noqa: E402
from medshot.napari.run_panel import RunPanel  # noqa: E402
from medshot.synthetic import random_warp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_MS = 300_000  # a generous bound for a slow machine, not a timing check


@pytest.fixture(autouse=True)
def plugin():
    register_plugin()


@pytest.fixture()
def setup(tmp_path, template_files, phantom, capsys):
    image, mask, lm = template_files
    tj = tmp_path / "template.json"
    assert main(["template", str(image), "--mask", str(mask), "--landmarks", str(lm), "--out", str(tj)]) == 0
    targets = tmp_path / "targets"
    targets.mkdir()
    for seed in (1, 2):
        case = random_warp(phantom, seed=seed)[0]
        save_png(targets / f"target_{seed}.png", (case.image * 255).astype(np.uint8))
    return tj, targets


def _panel(viewer, template_json) -> RunPanel:
    return open_panel(viewer, template_json, RunPanel)


def test_run_on_two_targets_adds_result_layers_and_a_review_table(make_napari_viewer, qtbot, setup, tmp_path):
    tj, targets = setup
    viewer = make_napari_viewer()
    panel = _panel(viewer, tj)
    assert panel.template_edit.text() == str(tj)  # the opened template is the one to run
    assert "classical" in [panel.backbone_combo.itemText(i) for i in range(panel.backbone_combo.count())]
    panel.set_targets([targets])
    panel.set_output(tmp_path / "out")
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS):
        panel.run()
    assert panel.worker is None and panel.run_button.isEnabled()
    names = {layer.name for layer in viewer.layers}
    for stem in ("target_1", "target_2"):
        assert {stem, f"{stem} mask", f"{stem} landmarks"} <= names
    rows = panel.table_rows()
    assert sorted(r[0] for r in rows) == ["target_1", "target_2"]
    assert float(rows[0][1]) <= float(rows[1][1])  # weakest first
    assert all(r[2] in ("ok", "low_confidence") for r in rows)
    weakest = rows[0][0]
    assert panel.selected_stem() == weakest
    visible = {layer.name for layer in viewer.layers if layer.visible and layer.name.startswith("target_")}
    assert visible == {weakest, f"{weakest} mask", f"{weakest} landmarks"}
    points = viewer.layers[f"{weakest} landmarks"]
    conf = points.features["confidence"].to_numpy()
    assert len(conf) == 4 and np.all((0 <= conf) & (conf <= 1))
    from matplotlib import colormaps

    np.testing.assert_allclose(points.face_color[:, :3], colormaps["RdYlGn"](conf)[:, :3], atol=0.02)
    out = tmp_path / "out"
    for stem in ("target_1", "target_2"):
        assert (out / f"{stem}_mask.png").is_file() and (out / f"{stem}.mrk.json").is_file()
    review = list(csv.DictReader(open(out / "review.csv")))
    assert [Path(r["target"]).stem for r in review] == [r[0] for r in rows]

    # a corrected mask and a moved landmark are saved beside the outputs
    mask_layer = viewer.layers[f"{weakest} mask"]
    edited = np.asarray(mask_layer.data).copy()
    edited[:10, :10] = 2
    mask_layer.data = edited
    moved = np.asarray(points.data).copy()
    moved[0] += [3.0, -2.0]
    points.data = moved
    written = panel.save_corrections()
    assert {p.name for p in written} == {f"{weakest}_corrected_mask.png", f"{weakest}_corrected.mrk.json",
                                         f"{weakest}_corrected_landmarks.csv"}
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{weakest}_corrected_mask.png")), edited)
    rows_lm = list(csv.DictReader(open(out / f"{weakest}_corrected_landmarks.csv")))
    np.testing.assert_allclose([float(rows_lm[0]["x"]), float(rows_lm[0]["y"])], moved[0][::-1], atol=1e-3)
    back = read_markups(out / f"{weakest}_corrected.mrk.json")
    frame = frame_of(viewer.layers[weakest])
    np.testing.assert_allclose(back[0].ras, frame.ras(moved[:1])[0], atol=1e-3)


def test_cancel_stops_the_worker_after_the_current_target(make_napari_viewer, qtbot, setup, tmp_path):
    tj, targets = setup
    many = [targets / "target_1.png", targets / "target_2.png"] * 2
    for i, src in enumerate(many):  # four targets with distinct names
        (tmp_path / f"copy_{i}.png").write_bytes(src.read_bytes())
    viewer = make_napari_viewer()
    panel = _panel(viewer, tj)
    panel.set_targets([tmp_path / f"copy_{i}.png" for i in range(4)])
    panel.set_output(tmp_path / "out")
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS):
        worker = panel.run()
        worker.yielded.connect(lambda _: panel.cancel())
    assert 1 <= len(panel.outcomes) < 4
    assert panel.worker is None and panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert panel.status.text().startswith("cancelled")


def test_batch_mode_replaces_each_target_with_its_batch_result(make_napari_viewer, qtbot, setup, tmp_path):
    tj, targets = setup
    for i, src in enumerate([targets / "target_1.png", targets / "target_2.png"] * 2):
        (tmp_path / f"copy_{i}.png").write_bytes(src.read_bytes())
    viewer = make_napari_viewer()
    panel = _panel(viewer, tj)
    assert panel.batch_check.isChecked()  # the default, as on the command line
    panel.task_combo.setCurrentText("segment")
    panel.set_targets([tmp_path / f"copy_{i}.png" for i in range(4)])
    panel.set_output(tmp_path / "out")
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS):
        panel.run()
    assert panel.progress.maximum() == 8 and panel.progress.value() == 8  # pass 1 and the batch result
    assert sorted(o.stem for o in panel.outcomes) == [f"copy_{i}" for i in range(4)]
    assert "pseudo-templates" in panel.status.text()
    names = [layer.name for layer in viewer.layers]
    assert names.count("copy_0 mask") == 1  # the batch result replaced pass 1's layers


def test_a_failing_target_is_listed_first_with_its_reason(make_napari_viewer, qtbot, setup, tmp_path):
    tj, targets = setup
    save_png(tmp_path / "flat.png", np.full((40, 40), 7, np.uint8))
    viewer = make_napari_viewer()
    panel = _panel(viewer, tj)
    panel.task_combo.setCurrentText("localize")
    panel.set_targets([tmp_path / "flat.png", targets / "target_1.png"])
    panel.set_output(tmp_path / "out")
    with qtbot.waitSignal(panel.run_finished, timeout=RUN_TIMEOUT_MS):
        panel.run()
    rows = panel.table_rows()
    assert rows[0][0] == "flat" and rows[0][2] == "failed" and "constant" in rows[0][3]
    assert rows[1][0] == "target_1" and "target_1 mask" not in viewer.layers  # localize only


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "medshot.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.display  # the command starts Xvfb itself when there is no display; without Xvfb it refuses
def test_annotate_screenshot_is_headless(tmp_path, template_files):
    shot = tmp_path / "shot.png"
    run = _cli("annotate", str(template_files[0]), "--screenshot", str(shot), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    pic = np.asarray(Image.open(shot).convert("RGB"), float)
    assert pic.shape[0] > 500 and pic.shape[1] > 1000
    assert pic.std() > 20  # the window with its image and panels, not an empty frame


def test_annotate_refuses_bad_input_in_one_line(tmp_path, template_files, capsys):
    assert main(["annotate"]) == 2
    (tmp_path / "notes.txt").write_text("x")
    assert main(["annotate", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "notes.txt" in err[1]
