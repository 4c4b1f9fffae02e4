"""`medshot evaluate` on tiny synthetic datasets whose right answers are known in closed form."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from evaluate_helpers import case_blocks
from PIL import Image
from scipy import ndimage, stats

from medshot.cli import main
from medshot.evaluation.dataset import discover_dataset
from medshot.evaluation.plan import select_templates
from medshot.evaluation.report import bootstrap_ci, paired_wilcoxon
from medshot.evaluation.store import CASES_HEADER

H, W = 48, 64  # images; --work-size 64 keeps the working grid equal to the image grid
RECT1 = (12, 28, 16, 40)  # label 1: rows 12..27, columns 16..39 (16 x 24)
RECT2 = (30, 40, 44, 56)  # label 2: rows 30..39, columns 44..55 (10 x 12)
SHIFT = (4, 2)  # (dx, dy) of case b against case a
LANDMARKS = {"p": (20.0, 15.0), "q": (50.0, 35.0)}


def _shifted_rect_dice(rect, dx, dy) -> float:
    r0, r1, c0, c1 = rect
    h, w = r1 - r0, c1 - c0
    return 2 * (h - abs(dy)) * (w - abs(dx)) / (2 * h * w)


def make_dataset(root: Path) -> Path:
    """a; b = a shifted by SHIFT (image, masks and landmarks); c = an identical copy of a."""
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.normal(size=(H, W)), 2)
    img = (img - img.min()) / (img.max() - img.min())
    mask = np.zeros((H, W), np.uint8)
    for label, (r0, r1, c0, c1) in ((1, RECT1), (2, RECT2)):
        mask[r0:r1, c0:c1] = label
    img = np.clip(img + 0.5 * (mask == 1) - 0.3 * (mask == 2), 0, 1)
    dx, dy = SHIFT
    cases = {"a": (img, mask, (0, 0)), "b": (np.roll(img, (dy, dx), (0, 1)), np.roll(mask, (dy, dx), (0, 1)), SHIFT),
             "c": (img, mask, (0, 0))}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = ["image,name,x,y"]
    for name, (im, m, (sx, sy)) in cases.items():
        Image.fromarray((im * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(m).save(root / "masks" / f"{name}.png")
        lines += [f"{name}.png,{lm},{x + sx},{y + sy}" for lm, (x, y) in LANDMARKS.items()]
    (root / "landmarks.csv").write_text("\n".join(lines) + "\n")
    (root / "label_names.csv").write_text("label,name\n0,background\n1,box\n2,small box\n")
    return root


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def evaluate(*args) -> int:
    return main(["evaluate", *map(str, args), "--work-size", "64", "--quiet"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


REFERENCE_ARGS = ("--backbones", "classical,dinov2_vits14", "--segmenters", "classical,sam_vit_b",
                  "--baselines", "identity")


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """An uninterrupted run: template a, targets b and c, medshot classical + identity baseline."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert evaluate("--data", dataset, "--out", out, *REFERENCE_ARGS) == 0
    return out


# -- known answers ----------------------------------------------------------------------------------


def test_identity_baseline_scores_what_the_shift_implies(dataset, tmp_path):
    out = tmp_path / "rep"
    assert evaluate("--data", dataset, "--out", out, "--backbones", "none", "--baselines", "identity",
                    "--templates", "all") == 0
    rows = read_rows(out / "cases.csv")
    assert {(r["template"], r["target"]) for r in rows} == {(t, g) for t in "abc" for g in "abc" if t != g}
    expected = {"1": _shifted_rect_dice(RECT1, *SHIFT), "2": _shifted_rect_dice(RECT2, *SHIFT)}
    shift_px = float(np.hypot(*SHIFT))
    for r in rows:
        moved = "b" in (r["template"], r["target"])
        if r["kind"] == "label":
            assert float(r["dice"]) == pytest.approx(expected[r["item"]] if moved else 1.0, abs=1e-6)
            if not moved:
                assert float(r["hd95_px"]) == 0.0
            assert r["item_name"] == {"1": "box", "2": "small box"}[r["item"]]
        else:
            assert float(r["distance_px"]) == pytest.approx(shift_px if moved else 0.0, abs=1e-4)
            assert float(r["ned"]) == pytest.approx((shift_px if moved else 0.0) / np.hypot(H, W), abs=1e-6)
    summary = {(r["metric"], r["item"]): r for r in read_rows(out / "summary.csv") if r["method"] == "identity"}
    # 6 ordered pairs: 4 involve the shifted case, 2 are identical copies
    mean_dice = (4 * (expected["1"] + expected["2"]) + 2 * 2) / 12
    assert float(summary[("dice", "all")]["mean"]) == pytest.approx(mean_dice, rel=1e-5)
    assert float(summary[("dice", "1")]["median"]) == pytest.approx(expected["1"], rel=1e-5)
    assert int(summary[("dice", "all")]["n"]) == 12
    assert int(summary[("dice", "all")]["n_templates"]) == 3
    assert float(summary[("distance_px", "all")]["mean"]) == pytest.approx(shift_px * 8 / 12, rel=1e-4)


def test_manifest_with_spacing_reports_mm(dataset, tmp_path):
    spec = {"label_names": {"1": "box", "2": "small box"}, "cases": [
        {"image": str(dataset / "images" / f"{n}.png"), "mask": str(dataset / "masks" / f"{n}.png"),
         "spacing": [0.5, 0.5], "name": f"case_{n}",
         "landmarks": [{"name": lm, "x": x + (SHIFT[0] if n == "b" else 0), "y": y + (SHIFT[1] if n == "b" else 0)}
                       for lm, (x, y) in LANDMARKS.items()]}
        for n in "ab"]}
    manifest = tmp_path / "cases.json"
    manifest.write_text(json.dumps(spec))
    ds = discover_dataset(manifest)
    assert ds.names == ["case_a", "case_b"] and ds.case("case_b").spacing_yx == (0.5, 0.5)
    out = tmp_path / "rep"
    assert evaluate("--data", manifest, "--out", out, "--backbones", "none", "--baselines", "identity") == 0
    for r in read_rows(out / "cases.csv"):
        if r["kind"] == "label":
            assert float(r["hd95_mm"]) == pytest.approx(0.5 * float(r["hd95_px"]), rel=1e-5)
        else:
            assert float(r["distance_mm"]) == pytest.approx(0.5 * float(r["distance_px"]), rel=1e-5)


def test_csv_manifest(dataset, tmp_path):
    (tmp_path / "a_landmarks.csv").write_text("name,x,y\np,1,2\n")
    (tmp_path / "manifest.csv").write_text(
        "image,mask,landmarks,spacing_y,spacing_x\n"
        f"{dataset}/images/a.png,{dataset}/masks/a.png,a_landmarks.csv,0.8,0.9\n"
        f"{dataset}/images/c.png,{dataset}/masks/c.png,{dataset}/landmarks.csv,,\n")
    ds = discover_dataset(tmp_path)  # a folder holding manifest.csv
    assert ds.names == ["a", "c"]
    assert ds.case("a").spacing_yx == (0.8, 0.9) and ds.case("c").spacing_yx is None
    assert [(lm.name, *lm.point) for lm in ds.case("a").landmarks] == [("p", 2.0, 1.0)]  # (row, col) = (y, x)
    assert [lm.name for lm in ds.case("c").landmarks] == ["p", "q"]
    assert ds.case("a").labels == (1, 2) and ds.has_masks and ds.has_landmarks


def test_template_selection():
    names = [f"n{i}" for i in range(10)]
    assert select_templates(names, "first") == ["n0"]
    assert select_templates(names, "all") == names
    assert select_templates(names, "3", "first") == ["n0", "n1", "n2"]
    assert select_templates(names, "3", "spread") == ["n0", "n5", "n9"]
    assert select_templates(names, "1", "spread") == ["n0"]
    assert select_templates(names, "12") == names
    with pytest.raises(Exception, match="templates"):
        select_templates(names, "some")


def test_statistics_are_reproducible_and_sane():
    x = np.random.default_rng(3).normal(0.8, 0.05, 40)
    lo, hi = bootstrap_ci(x)
    assert (lo, hi) == bootstrap_ci(x) and lo < x.mean() < hi
    y = x - 0.02 + np.random.default_rng(4).normal(0, 0.01, 40)
    p, n = paired_wilcoxon(x, y)
    assert n == 40 and p == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert paired_wilcoxon(x, x) == (1.0, 40)
    assert np.isnan(paired_wilcoxon(x[:1], y[:1])[0])


# -- the reference run: rows, report, skipped methods -----------------------------------------------


def test_cases_rows_and_report_files(reference):
    rows = read_rows(reference / "cases.csv")
    assert tuple(rows[0]) == CASES_HEADER
    # 2 targets x 2 methods, each with 2 labels and 2 landmarks
    assert len(rows) == 2 * 2 * (2 + 2)
    assert {r["method"] for r in rows} == {"medshot:classical/classical", "identity"}
    for r in rows:
        assert float(r["seconds"]) > 0 and float(r["peak_mem_mb"]) >= 0
    medshot = [float(r["dice"]) for r in rows if r["method"].startswith("medshot") and r["kind"] == "label"]
    assert min(medshot) > 0.5  # a sanity floor on an easy case, not a benchmark
    for name in ("summary.csv", "by_template.csv", "timing.csv", "methods.csv", "table.png", "box_dice.png",
                 "templates_dice.png", "box_ned.png", "overlays.png"):
        assert (reference / name).is_file(), name
    assert (reference / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (reference / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 4
    assert "http://" not in page and "https://" not in page
    assert not list(reference.glob(".*.part"))


def test_unavailable_backbone_and_segmenter_are_listed_as_skipped(reference):
    from medshot.features import backbone_entries
    from medshot.segment import segmenter_names, segmenter_status

    entry = {e.name: e for e in backbone_entries()}.get("dinov2_vits14")
    if entry is not None and entry.available()[0]:
        pytest.skip("dinov2_vits14 weights are present here")
    methods = {r["method"]: r for r in read_rows(reference / "methods.csv")}
    assert methods["backbone dinov2_vits14"]["status"] == "skipped"
    assert methods["backbone dinov2_vits14"]["reason"]
    if "sam_vit_b" in segmenter_names() and segmenter_status("sam_vit_b")[0]:
        pytest.skip("sam_vit_b weights are present here")
    assert methods["segmenter sam_vit_b"]["status"] == "skipped" and methods["segmenter sam_vit_b"]["reason"]
    assert methods["medshot:classical/classical"]["status"] == "run"
    page = (reference / "report.html").read_text()
    assert "dinov2_vits14" in page and "skipped" in page


# -- resume -------------------------------------------------------------------------------------------


def test_resume_after_a_cut_off_case_gives_the_same_summary(dataset, reference, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(reference / "run.json", out / "run.json")
    header = (reference / "cases.csv").read_text().splitlines(keepends=True)[0]
    blocks = case_blocks(reference / "cases.csv")
    # first case complete, the second one cut in the middle of its second line
    (out / "cases.csv").write_text(header + "".join(blocks[0]) + blocks[1][0] + blocks[1][1][:17])
    assert evaluate("--data", dataset, "--out", out, *REFERENCE_ARGS) == 0
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()
    resumed = case_blocks(out / "cases.csv")
    assert resumed[0] == blocks[0]  # kept as it was (same seconds): not recomputed
    assert len(resumed) == len(blocks) and sum(map(len, resumed)) == sum(map(len, blocks))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_summary(dataset, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medshot.cli", "evaluate", "--data", str(dataset), "--out", str(out),
           *REFERENCE_ARGS, "--work-size", "64", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "cases.csv").exists() and len(case_blocks(out / "cases.csv")) >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = len(case_blocks(out / "cases.csv"))
    assert 1 <= done < len(case_blocks(reference / "cases.csv"))
    assert not (out / "summary.csv").exists()
    assert evaluate("--data", dataset, "--out", out, *REFERENCE_ARGS) == 0
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()


# -- bad input: one line, exit 2, nothing written -------------------------------------------------------


def _fails_cleanly(capsys, out: Path, *args) -> str:
    code = evaluate("--out", out, *args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("medshot: error:") and "\n" not in err, err
    assert not (out / "report.html").exists() and not (out / "summary.csv").exists()
    return err


def test_missing_dataset_folder(capsys, tmp_path):
    err = _fails_cleanly(capsys, tmp_path / "out", "--data", tmp_path / "nowhere")
    assert "nowhere" in err and not (tmp_path / "out").exists()


def test_empty_images_folder(capsys, tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    err = _fails_cleanly(capsys, tmp_path / "out", "--data", tmp_path / "ds")
    assert "images" in err and not (tmp_path / "out").exists()


def test_mask_size_mismatch(capsys, dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    Image.fromarray(np.zeros((H, W + 3), np.uint8)).save(ds / "masks" / "c.png")
    err = _fails_cleanly(capsys, tmp_path / "out", "--data", ds)
    assert "c.png" in err and "mask" in err and not (tmp_path / "out").exists()


def test_missing_mask_and_no_truth(capsys, dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    (ds / "masks" / "b.png").unlink()
    assert "b.png" in _fails_cleanly(capsys, tmp_path / "out", "--data", ds)
    shutil.rmtree(ds / "masks")
    (ds / "landmarks.csv").unlink()
    assert "ground truth" in _fails_cleanly(capsys, tmp_path / "out", "--data", ds)


def test_2d_images_and_3d_volumes_in_one_dataset_are_refused(capsys, dataset, tmp_path):
    import nibabel as nib

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    for sub in ("images", "masks"):
        nib.save(nib.Nifti1Image(np.ones((8, 9, 5), np.uint8), np.eye(4)), ds / sub / "v1.nii.gz")
    err = _fails_cleanly(capsys, tmp_path / "out", "--data", ds)
    assert "v1.nii.gz" in err and "3D" in err and "2D" in err and not (tmp_path / "out").exists()


def test_resuming_with_other_settings_is_refused(capsys, dataset, reference, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(reference, out)
    before = (out / "summary.csv").read_bytes()
    code = main(["evaluate", "--data", str(dataset), "--out", str(out), *REFERENCE_ARGS, "--work-size", "48",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "work_size" in err and "--restart" in err and "\n" not in err
    assert (out / "summary.csv").read_bytes() == before


def test_unknown_baseline_is_an_error(capsys, dataset, tmp_path):
    assert "baseline" in _fails_cleanly(capsys, tmp_path / "out", "--data", dataset, "--baselines", "elastix")


# -- failed cases are rows, scored as failures; the version keys the resume (issue 21) ---------------


def _fail_baselines_on_c(patch) -> None:
    """Make the baselines raise on target c (a case that errors); medshot runs as usual."""
    from medshot.evaluation import runner as runner_module

    real = runner_module.run_baseline

    def flaky(shot, image, baseline, *args):
        if Path(image).stem == "c":
            raise RuntimeError("registration diverged")
        return real(shot, image, baseline, *args)

    patch.setattr(runner_module, "run_baseline", flaky)


@pytest.fixture()
def identity_fails_on_c(monkeypatch):
    _fail_baselines_on_c(monkeypatch)


def test_a_failed_case_is_a_row_scored_zero_and_exits_1(dataset, tmp_path, capsys, identity_fails_on_c):
    out = tmp_path / "failing"
    assert evaluate("--data", dataset, "--out", out, "--baselines", "identity") == 1
    err = capsys.readouterr().err
    assert "1 case(s) failed" in err and "identity 1" in err
    rows = read_rows(out / "cases.csv")
    failed = [r for r in rows if r["status"] == "failed"]
    # both labels and both landmarks of a -> c, none dropped
    assert {(r["method"], r["target"], r["kind"], r["item"]) for r in failed} == {
        ("identity", "c", kind, item) for kind, item in (("label", "1"), ("label", "2"), ("landmark", "p"),
                                                         ("landmark", "q"))}
    assert all("registration diverged" in r["reason"] for r in failed)
    assert all(float(r["dice"]) == 0.0 for r in failed if r["kind"] == "label")
    assert all(float(r["ned"]) == 1.0 for r in failed if r["kind"] == "landmark")
    assert {r["status"] for r in rows if r not in failed} == {"ok"}
    # the mean counts the failure: identity's Dice is (b's two labels + two zeros) / 4
    summary = {(r["metric"], r["item"], r["method"]): r for r in read_rows(out / "summary.csv")}
    dice = summary[("dice", "all", "identity")]
    assert int(dice["n"]) == 4 and int(dice["n_failed"]) == 2
    expected = (_shifted_rect_dice(RECT1, *SHIFT) + _shifted_rect_dice(RECT2, *SHIFT)) / 4
    assert float(dice["mean"]) == pytest.approx(expected, rel=1e-5)
    assert int(summary[("dice", "all", "medshot:classical/classical")]["n_failed"]) == 0
    methods = {r["method"]: r for r in read_rows(out / "methods.csv")}
    assert (methods["identity"]["cases"], methods["identity"]["failed"]) == ("2", "1")
    assert (methods["medshot:classical/classical"]["cases"], methods["medshot:classical/classical"]["failed"]) \
        == ("2", "0")
    page = (out / "report.html").read_text()
    assert "registration diverged" in page


def test_a_rerun_retries_failed_cases(dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "retry"
    with monkeypatch.context() as m:
        _fail_baselines_on_c(m)
        assert evaluate("--data", dataset, "--out", out, "--backbones", "none", "--baselines", "identity") == 1
    assert evaluate("--data", dataset, "--out", out, "--backbones", "none", "--baselines", "identity") == 0
    rows = read_rows(out / "cases.csv")
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2 * (2 + 2)
    assert float(next(r for r in rows if r["target"] == "c" and r["item"] == "1")["dice"]) == 1.0


def test_resume_recomputes_cases_of_another_medshot_version(dataset, reference, tmp_path, capsys):
    out = tmp_path / "older"
    shutil.copytree(reference, out)
    blocks = case_blocks(out / "cases.csv")
    # the same run, as if made by another medshot version, with a telltale number in its first case
    run = json.loads((out / "run.json").read_text())
    run["medshot_version"] = "0.0.1"
    (out / "run.json").write_text(json.dumps(run))
    header = (out / "cases.csv").read_text().splitlines(keepends=True)[0]
    fake = blocks[0][0].split(",")
    fake[header.split(",").index("dice")] = "0.123"
    (out / "cases.csv").write_text(header + ",".join(fake) + "".join(blocks[0][1:])
                                   + "".join(line for b in blocks[1:] for line in b))
    assert evaluate("--data", dataset, "--out", out, *REFERENCE_ARGS) == 0
    assert "0.0.1" in capsys.readouterr().err
    assert "0.123" not in (out / "cases.csv").read_text()
    assert json.loads((out / "run.json").read_text())["medshot_version"] != "0.0.1"
    assert (out / "summary.csv").read_bytes() == (reference / "summary.csv").read_bytes()
