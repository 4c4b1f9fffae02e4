"""`medshot evaluate` on volume datasets: discovery, a run with resume, report files, scoring in mm."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from evaluate_helpers import case_blocks

from medshot.cli import main
from medshot.evaluation.cases import Case
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.metrics import dice
from medshot.evaluation.runner import Prediction
from medshot.evaluation.scoring import score_case
from medshot.evaluation.store import CASES_HEADER_3D
from medshot.synthetic3d import (
    LANDMARK_NAMES_3D,
    Phantom3D,
    Warp3D,
    grid_affine,
    landmarks_voxel,
    sample_phantom,
)

# name -> (shape, spacing (mm along the source axes i, j, k), axis codes, warp)
CASES = {
    "a": ((36, 36, 26), (1.8, 1.8, 2.4), "RAS", None),
    # another field of view, anisotropic and in a non-canonical axis order, slightly moved
    "b": ((34, 38, 22), (1.9, 1.6, 3.0), "LPS", Warp3D(np.eye(3) * 1.03, np.array([2.0, -1.5, 1.0]))),
    "c": ((36, 36, 26), (1.8, 1.8, 2.4), "RAS", None),  # the same volume as a
}


def make_volume_dataset(root: Path) -> Path:
    """images/ + labels/ (the evaldata name) + one ``*centroids*voxel.csv`` of landmarks."""
    phantom = Phantom3D(60.0, seed=1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = ["id,label,name,i,j,k"]
    for name, (shape, spacing, axcodes, warp) in CASES.items():
        aff = grid_affine(shape, spacing, axcodes=axcodes)
        image, labels = sample_phantom(phantom, shape, aff, warp)
        nib.save(nib.Nifti1Image(image, aff), root / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(labels, aff), root / "labels" / f"{name}.nii.gz")
        for n, (i, j, k) in zip(LANDMARK_NAMES_3D, landmarks_voxel(phantom, aff, warp)):
            lines.append(f"{name},0,{n},{i:.4f},{j:.4f},{k:.4f}")
    (root / "label_centroids_voxel.csv").write_text("\n".join(lines) + "\n")
    (root / "label_names.csv").write_text("label,name\n0,background\n1,organ one\n2,organ two\n")
    return root


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


ARGS = ("--backbones", "classical", "--segmenters", "classical,sam_vit_b", "--baselines", "identity,affine")


def evaluate(*args) -> int:
    return main(["evaluate", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    return make_volume_dataset(tmp_path_factory.mktemp("vol") / "volumes")


@pytest.fixture(scope="module")
def run(volumes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "volumes"
    assert evaluate("--data", volumes, "--out", out, *ARGS) == 0
    return out


# -- discovery ------------------------------------------------------------------------------------------


def test_discovery_reads_volumes_in_their_own_axis_order(volumes):
    ds = discover_dataset(volumes)
    assert ds.kind == "3d" and ds.names == ["a", "b", "c"]
    assert ds.label_names == {1: "organ one", 2: "organ two"}
    b = ds.case("b")
    assert b.shape == (34, 38, 22) and b.ndim == 3
    np.testing.assert_allclose(b.spacing, (1.9, 1.6, 3.0))  # source i, j, k: not the canonical order
    assert b.labels == (1, 2) and b.mask.parent.name == "labels"
    assert [lm.name for lm in b.landmarks] == list(LANDMARK_NAMES_3D)
    aff = grid_affine(*CASES["b"][:2], axcodes="LPS")
    np.testing.assert_allclose(b.affine, aff)
    expected = landmarks_voxel(Phantom3D(60.0, seed=1), aff, CASES["b"][3])
    np.testing.assert_allclose([lm.point for lm in b.landmarks], expected, atol=1e-4)


def test_manifest_with_mm_landmarks_and_spacing(volumes, tmp_path):
    aff = grid_affine(*CASES["b"][:2], axcodes="LPS")
    ijk = np.array([[10.0, 12.5, 7.0]])
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    spec = {"cases": [
        {"image": str(volumes / "images" / "a.nii.gz"), "landmarks": [{"name": "p", "i": 3, "j": 4, "k": 5}]},
        {"image": str(volumes / "images" / "b.nii.gz"), "spacing": [2, 2, 2],
         "landmarks": [{"name": "p", "x_mm": xyz[0, 0], "y_mm": xyz[0, 1], "z_mm": xyz[0, 2]}]}]}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    ds = discover_dataset(tmp_path / "m.json")
    assert ds.kind == "3d" and not ds.has_masks and ds.has_landmarks
    np.testing.assert_allclose(ds.case("b").landmarks[0].point, ijk[0], atol=1e-9)
    assert ds.case("b").spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(ds.case("a").spacing, (1.8, 1.8, 2.4))


def _fails_cleanly(capsys, out: Path, *args) -> str:
    code = evaluate("--out", out, *args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("medshot: error:") and "\n" not in err, err
    assert not out.exists()
    return err


def test_bad_volume_datasets_fail_with_one_line(capsys, volumes, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(volumes, ds)
    (ds / "other_landmarks.csv").write_text("id,name,i,j,k\n")
    err = _fails_cleanly(capsys, tmp_path / "out", "--data", ds)
    assert "label_centroids_voxel.csv" in err and "other_landmarks.csv" in err
    (ds / "other_landmarks.csv").unlink()
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 30), np.uint8), np.eye(4)), ds / "labels" / "c.nii.gz")
    err = _fails_cleanly(capsys, tmp_path / "out", "--data", ds)
    assert "c.nii.gz" in err and "geometry" in err


# -- scoring in mm, analytic ----------------------------------------------------------------------------


def test_scoring_a_volume_in_mm_with_anisotropic_spacing():
    shape, spacing = (12, 14, 16), (0.8, 1.1, 2.5)
    truth = np.zeros(shape, np.uint8)
    truth[2:10, 3:11, 4:8] = 1  # a box 4 voxels deep along k
    truth[3:9, 4:10, 11] = 2  # a one-voxel plate across k
    pred = np.roll(truth, 1, axis=2)  # both moved by one voxel along k (2.5 mm)
    target = Case("t", Path("t.nii.gz"), Path("t_mask.nii.gz"), [], spacing, shape, (1, 2))
    points = {"p": np.array([1.0, 2.0, 3.0])}
    prediction = Prediction(pred, {1: 0.9}, {"p": np.array([2.0, 0.0, 5.0])}, {"p": 0.5})
    rows = score_case(prediction, {1: "box", 2: "plate"}, target, truth, points, {}, {"i": 0, "j": 1, "k": 2})
    box, plate, point = rows
    assert box["dice"] == pytest.approx(3 / 4) and box["hd95_px"] == pytest.approx(1.0)
    assert box["hd95_mm"] == pytest.approx(2.5) and box["score"] == 0.9
    assert plate["dice"] == 0.0 and plate["hd95_mm"] == pytest.approx(2.5)
    assert point["distance_px"] == pytest.approx(3.0)  # (1, -2, 2)
    assert point["distance_mm"] == pytest.approx(np.sqrt(0.8**2 + 2.2**2 + 5.0**2))
    assert (point["pred_i"], point["pred_j"], point["pred_k"], point["true_k"]) == (2.0, 0.0, 5.0, 3.0)
    assert point["ned"] == pytest.approx(3.0 / np.sqrt(12**2 + 14**2 + 16**2))


# -- a run: rows, report files, predictions in the target's geometry, resume ----------------------------


def test_volume_run_rows_and_report(run, volumes):
    rows = read_rows(run / "cases.csv")
    assert tuple(rows[0]) == CASES_HEADER_3D
    assert {r["method"] for r in rows} == {"medshot:classical/classical", "identity", "affine"}
    assert len(rows) == 2 * 3 * (2 + 4)  # targets b, c x 3 methods x (2 labels + 4 landmarks)
    same = [r for r in rows if r["target"] == "c"]  # an exact copy of the template
    assert all(float(r["dice"]) > 0.9 for r in same if r["kind"] == "label")
    assert all(float(r["distance_px"]) < 1.5 for r in same if r["kind"] == "landmark")
    methods = {r["method"]: r for r in read_rows(run / "methods.csv")}
    assert methods["identity"]["status"] == "run"  # one baseline builder for images and volumes
    assert methods["segmenter sam_vit_b"]["status"] == "skipped"
    for name in ("summary.csv", "by_template.csv", "timing.csv", "box_dice.png", "box_ned.png", "overlays.png"):
        assert (run / name).is_file(), name
    page = (run / "report.html").read_text()
    assert "3D volumes" in page and "HD95 (voxels)" in page and page.count('src="data:image/png;base64,') >= 4


def test_volume_predictions_are_in_the_target_geometry_and_match_the_rows(run, volumes):
    spacing = {n: np.array(CASES[n][1]) for n in CASES}
    for r in read_rows(run / "cases.csv"):
        if r["kind"] == "landmark":  # mm from the voxel columns and the target's own spacing
            d = np.array([float(r[f"pred_{a}"]) - float(r[f"true_{a}"]) for a in "ijk"])
            # columns hold 6 significant digits
            assert float(r["distance_mm"]) == pytest.approx(np.linalg.norm(d * spacing[r["target"]]), abs=1e-3)
            continue
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in r["method"])
        pred_img = nib.load(str(run / "predictions" / slug / f"a__{r['target']}.nii.gz"))
        truth_img = nib.load(str(volumes / "labels" / f"{r['target']}.nii.gz"))
        np.testing.assert_allclose(pred_img.affine, truth_img.affine, atol=1e-5)
        label = int(r["item"])
        value = dice(np.asarray(pred_img.dataobj) == label, np.asarray(truth_img.dataobj) == label)
        assert float(r["dice"]) == pytest.approx(value, abs=1e-5)


def test_volume_run_resumes_to_the_same_summary(volumes, run, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(run / "run.json", out / "run.json")
    header = (run / "cases.csv").read_text().splitlines(keepends=True)[0]
    blocks = case_blocks(run / "cases.csv")
    (out / "cases.csv").write_text(header + "".join(blocks[0]) + blocks[1][0] + blocks[1][1][:20])
    assert evaluate("--data", volumes, "--out", out, *ARGS) == 0
    assert (out / "summary.csv").read_bytes() == (run / "summary.csv").read_bytes()
    resumed = case_blocks(out / "cases.csv")
    assert resumed[0] == blocks[0] and len(resumed) == len(blocks)


def test_a_2d_cases_csv_is_not_resumed_as_a_volume_run(capsys, volumes, run, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    from medshot.evaluation.store import CASES_HEADER

    (out / "cases.csv").write_text(",".join(CASES_HEADER) + "\n")
    assert evaluate("--data", volumes, "--out", out, *ARGS) == 2
    err = capsys.readouterr().err
    assert "cases.csv" in err and "--restart" in err


def test_the_evaluation_never_imports_the_command_line():
    import subprocess
    import sys

    code = ("import sys, medshot.evaluation.run, medshot.evaluation.report, medshot.evaluation.runner; "
            "sys.exit(any(m.startswith('medshot.cli') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
