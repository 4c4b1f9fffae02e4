"""Batches lose nothing and say everything: merged tables, a lock, isolation, SIGINT/SIGKILL, resume, umask.

Each test names the row of issue 10's table it covers.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import use_segmenter, write_targets
from PIL import Image

from medshot.cli import main
from medshot.cli.outdir import LOCK_FILE, RUN_RECORD, OutputFolder
from medshot.data.write import process_umask

FAST = ["--work-size", "64", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(table: Path) -> list[dict]:
    with open(table, newline="") as fh:
        return list(csv.DictReader(fh))


def targets_in(table: Path) -> list[str]:
    return list(dict.fromkeys(r["target"] for r in rows_of(table)))


def masks_in(out: Path) -> set[str]:
    return {p.name[: -len("_mask.png")] for p in out.glob("*_mask.png")}


def stems(targets: list[str]) -> set[str]:
    return {Path(t).stem for t in targets}


@pytest.fixture()
def template_json(tmp_path, template_files, capsys):
    image, mask, landmarks = template_files
    out = tmp_path / "template.json"
    code, _, err = run(["template", image, "--mask", mask, "--landmarks", landmarks, "--out", out], capsys)
    assert code == 0, err
    return out


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def start_cli(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medshot.cli", *map(str, args)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, limit: float = 240.0) -> None:
    """Poll until ``path`` exists (a progress point of the child, not a timing assertion)."""
    end = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


# -- row 1: a second run into the same --out --------------------------------------------------------


def test_second_run_merges_results_by_target(tmp_path, template_json, phantom, capsys):
    a, b = write_targets(tmp_path / "targets", phantom, 2)
    out = tmp_path / "out"
    code, stdout, _ = run(["segment", "--template", template_json, "--out", out, a, b, *FAST], capsys)
    assert code == 0 and "2 targets:" in stdout and "0 failed" in stdout
    first = rows_of(out / "results.csv")
    code, _, _ = run(["segment", "--template", template_json, "--out", out, b, *FAST], capsys)
    assert code == 0
    second = rows_of(out / "results.csv")
    assert targets_in(out / "results.csv") == [str(a.resolve()), str(b.resolve())]
    # a's rows are those of the first run; b's were replaced, not appended
    key = str(a.resolve())
    assert [r for r in second if r["target"] == key] == [r for r in first if r["target"] == key]
    assert len(second) == len(first) == 4
    assert all(r["status"] in ("ok", "low_confidence") and r["reason"] == "" for r in second)
    record = json.loads((out / RUN_RECORD).read_text())
    assert set(record["commands"]["segment"]["targets"]) == {str(a.resolve()), str(b.resolve())}
    # localize into the same folder keeps its own table and leaves results.csv alone
    code, _, _ = run(["localize", "--template", template_json, "--out", out, a, *FAST], capsys)
    assert code == 0 and rows_of(out / "results.csv") == second
    landmarks = rows_of(out / "landmarks.csv")
    assert len(landmarks) == 4 and all(r["status"] in ("ok", "low_confidence") for r in landmarks)


# -- row 2: two overlapping runs into one --out -----------------------------------------------------


def test_a_run_holding_the_folder_refuses_a_second_one(tmp_path, template_json, phantom, capsys):
    (a,) = write_targets(tmp_path / "targets", phantom, 1)
    out = tmp_path / "out"
    holder = OutputFolder(out, "segment", "results.csv", ["target"]).open()
    try:
        code, _, err = run(["segment", "--template", template_json, "--out", out, a, *FAST], capsys)
    finally:
        holder.close()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "another medshot run" in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert not masks_in(out) and not (out / "results.csv").exists()


def test_overlapping_processes_never_write_unlisted_masks(tmp_path, template_json, phantom):
    targets = write_targets(tmp_path / "targets", phantom, 4)
    out = tmp_path / "out"
    procs = [start_cli(["segment", "--template", template_json, "--out", out, *targets[i::2], *FAST])
             for i in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    for _, stderr, code in results:
        assert code == 0 or (code == 2 and "another medshot run" in stderr), stderr
    assert any(code == 0 for *_, code in results)
    listed = stems(targets_in(out / "results.csv"))
    assert masks_in(out) == listed  # every mask written is in results.csv, and the other way round


def test_stale_lock_file_of_a_dead_run_is_taken_over(tmp_path, template_json, phantom, capsys):
    (a,) = write_targets(tmp_path / "targets", phantom, 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("pid 999999 on elsewhere")
    code, _, err = run(["segment", "--template", template_json, "--out", out, a, *FAST], capsys)
    assert code == 0, err
    assert masks_in(out) == {"case01"} and not (out / LOCK_FILE).exists()


# -- row 4: one target makes the segmenter fail ------------------------------------------------------


def test_failing_target_is_recorded_and_the_batch_goes_on(tmp_path, template_json, phantom, capsys, monkeypatch):
    write_targets(tmp_path / "targets", phantom, 3, bad=(2,))
    use_segmenter(monkeypatch, "raise")
    out = tmp_path / "out"
    code, stdout, err = run(["segment", "--template", template_json, "--out", out, tmp_path / "targets", *FAST],
                            capsys)
    assert code == 1
    assert "Traceback" not in err and "3 targets:" in stdout and "1 failed" in stdout
    assert "case02.png: failed: ValueError: Input image dtype is bool" in err
    rows = rows_of(out / "results.csv")
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["target"].endswith("case02.png") and "dtype is bool" in failed[0]["reason"]
    assert failed[0]["label"] == "" and failed[0]["score"] == ""
    assert masks_in(out) == {"case01", "case03"}
    assert {r["status"] for r in rows if r not in failed} <= {"ok", "low_confidence"}


# -- row 5: SIGINT after 9 of 10 targets ------------------------------------------------------------


def test_interrupt_keeps_finished_targets_and_resume_does_the_rest(tmp_path, template_json, phantom, capsys,
                                                                    monkeypatch):
    write_targets(tmp_path / "targets", phantom, 10, bad=(10,))
    out = tmp_path / "out"
    use_segmenter(monkeypatch, "interrupt")
    # the plain pass: each target's outputs land in OUT as it finishes (batch mode: see the next test)
    code, _, err = run(["segment", "--template", template_json, "--out", out, tmp_path / "targets", *FAST,
                        "--batch-mode", "off"], capsys)
    assert code == 130
    assert "9 of 10 targets finished" in err and "--resume" in err and "Traceback" not in err
    assert len(masks_in(out)) == 9 and len(targets_in(out / "results.csv")) == 9
    assert not list(out.glob(".*.part")) and not (out / LOCK_FILE).exists()
    # the interrupted target is redone on --resume, the nine others are not
    monkeypatch.undo()
    code, stdout, _ = run(["segment", "--template", template_json, "--out", out, "--resume", tmp_path / "targets",
                           *FAST, "--batch-mode", "off"], capsys)
    assert code == 0 and "1 targets:" in stdout and "9 skipped" in stdout
    assert len(masks_in(out)) == 10 and len(targets_in(out / "results.csv")) == 10


def test_interrupt_in_batch_mode_keeps_pass_one_and_resume_does_the_rest(tmp_path, template_json, phantom, capsys,
                                                                         monkeypatch):
    write_targets(tmp_path / "targets", phantom, 10, bad=(10,))
    out = tmp_path / "out"
    use_segmenter(monkeypatch, "interrupt")
    code, _, err = run(["segment", "--template", template_json, "--out", out, tmp_path / "targets", *FAST], capsys)
    # pass 1 is interrupted: its nine finished targets are kept; no final output exists before the last stage
    assert code == 130 and "9 of 10 targets finished" in err and "Traceback" not in err
    assert not masks_in(out) and len(list((out / ".medshot-batch" / "pass1").glob("*.found.pkl"))) == 9
    monkeypatch.undo()
    code, stdout, _ = run(["segment", "--template", template_json, "--out", out, "--resume", tmp_path / "targets",
                           *FAST], capsys)
    assert code == 0 and "9 skipped" in stdout  # pass 1 runs only the interrupted target
    assert len(masks_in(out)) == 10 and len(targets_in(out / "results.csv")) == 10


def test_real_sigint_keeps_what_is_finished(tmp_path, template_json, phantom):
    # enough targets that the batch cannot end between its first result and the signal, even on a loaded
    # machine where this process polls late (with 8 targets it once exited 0 with a benchmark running beside
    # the suite, most likely done before the signal came)
    made = write_targets(tmp_path / "targets", phantom, 8)
    targets = made + [shutil.copy(t, t.with_name(f"{t.stem}_{k}.png")) for k in range(4) for t in made]
    out = tmp_path / "out"
    # the plain pass, whose outputs land in OUT target by target
    proc = start_cli(["segment", "--template", template_json, "--out", out, *targets, *FAST, "--batch-mode", "off"])
    wait_for(out / "results.csv", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "targets finished" in err and "Traceback" not in err
    listed = stems(targets_in(out / "results.csv"))
    assert listed and masks_in(out) == listed


# -- row 6: SIGKILL mid-batch ------------------------------------------------------------------------


def test_after_sigkill_the_next_run_cleans_up_and_resumes(tmp_path, template_json, phantom):
    targets = write_targets(tmp_path / "targets", phantom, 6)
    out = tmp_path / "out"
    proc = start_cli(["segment", "--template", template_json, "--out", out, *targets, *FAST])
    wait_for(out / RUN_RECORD, proc)
    proc.kill()
    proc.communicate()
    done = set(json.loads((out / RUN_RECORD).read_text())["commands"]["segment"]["targets"])
    assert done and stems(list(done)) <= masks_in(out)
    (out / ".case06_mask.png.k1ll3d.part").write_bytes(b"half a PNG")  # what a kill during a write leaves
    code = subprocess.run([sys.executable, "-m", "medshot.cli", "segment", "--template", str(template_json),
                           "--out", str(out), "--resume", *map(str, targets), *FAST], env=cli_env(),
                          capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    assert f"{len(done)} skipped" in code.stdout
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]
    assert masks_in(out) == {f"case{i:02d}" for i in range(1, 7)} == stems(targets_in(out / "results.csv"))


def test_resume_redoes_targets_done_with_other_settings(tmp_path, template_json, phantom, capsys):
    a, b = write_targets(tmp_path / "targets", phantom, 2)
    out = tmp_path / "out"
    assert run(["segment", "--template", template_json, "--out", out, a, *FAST], capsys)[0] == 0
    code, stdout, _ = run(["segment", "--template", template_json, "--out", out, "--resume", a, b, *FAST], capsys)
    assert code == 0 and "1 targets:" in stdout and "1 skipped" in stdout
    code, stdout, _ = run(["segment", "--template", template_json, "--out", out, "--resume", a, b,
                           "--work-size", "48", "--quiet"], capsys)
    assert code == 0 and "2 targets:" in stdout and "skipped" not in stdout


# -- row 7: --out = the targets' folder ---------------------------------------------------------------


def test_out_inside_the_targets_folder_is_refused(tmp_path, template_json, phantom, capsys):
    folder = tmp_path / "targets"
    write_targets(folder, phantom, 2)
    before = sorted(p.name for p in folder.iterdir())
    for out in (folder, folder / "results"):
        code, _, err = run(["segment", "--template", template_json, "--out", out, folder, *FAST], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "inside the target folder" in lines[0]
    code, _, err = run(["segment", "--template", template_json, "--out", folder, folder / "case01.png", *FAST],
                       capsys)
    assert code == 2 and "folder of the target" in err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_medshot_outputs_are_never_taken_as_targets(tmp_path, template_json, phantom, capsys):
    folder = tmp_path / "targets"
    write_targets(folder, phantom, 2)
    out = tmp_path / "out"
    assert run(["segment", "--template", template_json, "--out", out, folder, *FAST], capsys)[0] == 0
    # outputs of an older medshot copied in beside the scans are skipped by name ...
    for p in out.glob("case01_*.png"):
        (folder / p.name).write_bytes(p.read_bytes())
    out2 = tmp_path / "out2"
    code, stdout, _ = run(["segment", "--template", template_json, "--out", out2, folder, *FAST], capsys)
    assert code == 0 and "2 targets:" in stdout and masks_in(out2) == {"case01", "case02"}
    # ... and a folder holding a run record is an output folder, not a folder of targets
    code, _, err = run(["segment", "--template", template_json, "--out", tmp_path / "out3", out, *FAST], capsys)
    assert code == 2 and "medshot output folder" in err and not (tmp_path / "out3").exists()


# -- row 8: output permissions follow the umask -----------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_users_umask(tmp_path, template_files, phantom, capsys, umask):
    image, mask, landmarks = template_files
    (a,) = write_targets(tmp_path / "targets", phantom, 1)
    old = os.umask(umask)
    process_umask.cache_clear()
    try:
        out = tmp_path / "out"
        assert run(["template", image, "--mask", mask, "--out", tmp_path / "t.json"], capsys)[0] == 0
        assert run(["segment", "--template", tmp_path / "t.json", "--out", out, a, *FAST], capsys)[0] == 0
    finally:
        os.umask(old)
        process_umask.cache_clear()
    written = [tmp_path / "t.json", *out.iterdir()]
    assert {p.name for p in written} >= {"t.json", "case01_mask.png", "case01_overlay.png", "results.csv", RUN_RECORD}
    for p in written:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_label_values_survive_a_run(tmp_path, phantom, capsys):
    """Row 10 at the batch level: a 0/255 template mask gives 0/255 output masks (and 255 in results.csv)."""
    Image.fromarray((phantom.image * 255).astype(np.uint8)).save(tmp_path / "t.png")
    Image.fromarray(((phantom.mask == 1) * 255).astype(np.uint8)).save(tmp_path / "t_mask.png")
    assert run(["template", tmp_path / "t.png", "--mask", tmp_path / "t_mask.png", "--out", tmp_path / "t.json"],
               capsys)[0] == 0
    (a,) = write_targets(tmp_path / "targets", phantom, 1)
    out = tmp_path / "out"
    assert run(["segment", "--template", tmp_path / "t.json", "--out", out, a, *FAST], capsys)[0] == 0
    written = np.array(Image.open(out / "case01_mask.png"))
    assert set(np.unique(written)) == {0, 255}
    assert [r["label"] for r in rows_of(out / "results.csv")] == ["255"]

