"""``--workers N`` and ``--scheduler ADDRESS`` give what a serial run gives; a lost worker loses no finished target."""

from __future__ import annotations

import concurrent.futures
import csv
from pathlib import Path

import numpy as np
import pytest  # noqa: F401 - fixtures
from batch_helpers import use_segmenter, write_targets
from PIL import Image

from medshot.cli import main

FAST = ["--work-size", "64", "--quiet"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(out: Path, name: str = "results.csv") -> list[dict]:
    """Rows without the ``seconds`` column (timings differ from run to run)."""
    with open(out / name, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(out.glob("*_mask.png"))}


@pytest.fixture()
def setup(tmp_path, template_files, phantom, capsys):
    image, mask, landmarks = template_files
    t = tmp_path / "template.json"
    assert run(["template", image, "--mask", mask, "--landmarks", landmarks, "--out", t], capsys)[0] == 0
    write_targets(tmp_path / "targets", phantom, 5)
    serial = tmp_path / "serial"
    assert run(["segment", "--template", t, "--out", serial, tmp_path / "targets", *FAST], capsys)[0] == 0
    return t, tmp_path / "targets", serial


def assert_same_as_serial(out: Path, serial: Path) -> None:
    a, b = masks(out), masks(serial)
    assert list(a) == list(b) and len(a) == 5
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert table(out) == table(serial)
    for p in serial.glob("*_overlay.png"):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_local_workers_match_a_serial_run(setup, tmp_path, capsys):
    t, targets, serial = setup
    out = tmp_path / "workers"
    code, stdout, err = run(["segment", "--template", t, "--out", out, "--workers", "2", targets, *FAST], capsys)
    assert code == 0, err
    assert "5 targets:" in stdout
    assert_same_as_serial(out, serial)
    # localize too: the same landmarks.csv as a serial run
    code, _, _ = run(["localize", "--template", t, "--out", tmp_path / "loc1", targets, *FAST], capsys)
    code2, _, _ = run(["localize", "--template", t, "--out", tmp_path / "loc2", "--workers", "2", targets, *FAST],
                      capsys)
    assert code == code2 == 0
    assert table(tmp_path / "loc1", "landmarks.csv") == table(tmp_path / "loc2", "landmarks.csv")


def test_a_worker_that_dies_fails_only_its_target(tmp_path, template_files, phantom, capsys, monkeypatch):
    image, mask, _ = template_files
    t = tmp_path / "template.json"
    assert run(["template", image, "--mask", mask, "--out", t], capsys)[0] == 0
    write_targets(tmp_path / "targets", phantom, 5, bad=(3,))
    use_segmenter(monkeypatch, "die")  # shipped to the workers with the shot: case03 ends its process
    out = tmp_path / "out"
    code, stdout, err = run(["segment", "--template", t, "--out", out, "--workers", "2", tmp_path / "targets",
                             *FAST], capsys)
    assert code == 1 and "1 failed" in stdout and "Traceback" not in err
    rows = {Path(r["target"]).name: r for r in table(out)}
    assert rows["case03.png"]["status"] == "failed" and "worker process died" in rows["case03.png"]["reason"]
    assert sorted(masks(out)) == [f"case0{i}_mask.png" for i in (1, 2, 4, 5)]
    assert all(rows[f"case0{i}.png"]["status"] != "failed" for i in (1, 2, 4, 5))


def test_batch_options_are_checked_first(setup, tmp_path, capsys):
    t, targets, _ = setup
    out = tmp_path / "never"
    for extra, words in ((["--workers", "0"], "--workers must be at least 1"),
                         (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
                         (["--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler")):
        code, _, err = run(["segment", "--template", t, "--out", out, targets, *extra, *FAST], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert not out.exists()


def test_dask_cluster_matches_a_serial_run(setup, tmp_path, capsys):
    import distributed  # the test command installs the dask extra: this must run, not skip

    t, targets, serial = setup
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        out = tmp_path / "dask"
        code, stdout, err = run(["segment", "--template", t, "--out", out, "--scheduler", cluster.scheduler_address,
                                 targets, *FAST], capsys)
    assert code == 0, err
    assert "5 targets:" in stdout
    assert_same_as_serial(out, serial)


def test_scheduler_without_dask_says_how_to_install(setup, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("distributed", "dask"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    t, targets, _ = setup
    code, _, err = run(["segment", "--template", t, "--out", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:1",
                        targets, *FAST], capsys)
    assert code == 2 and err.strip() == 'medshot: error: --scheduler needs Dask: pip install "medshot[dask]"'


def test_dask_worker_lost_midway_loses_no_finished_target(tmp_path, template_files, phantom, capsys, monkeypatch):
    import dask
    import distributed

    image, mask, _ = template_files
    t = tmp_path / "template.json"
    assert run(["template", image, "--mask", mask, "--out", t], capsys)[0] == 0
    write_targets(tmp_path / "targets", phantom, 4, bad=(2,))
    use_segmenter(monkeypatch, "die")  # case02 takes down whichever worker runs it
    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster:
        code, stdout, err = run(["segment", "--template", t, "--out", out, "--scheduler", cluster.scheduler_address,
                                 tmp_path / "targets", *FAST], capsys)
    assert code == 1 and "1 failed" in stdout
    rows = {Path(r["target"]).name: r for r in table(out)}
    bad = rows["case02.png"]
    assert bad["status"] == "failed" and "Dask worker running it was lost" in bad["reason"]
    assert sorted(masks(out)) == ["case01_mask.png", "case03_mask.png", "case04_mask.png"]


@pytest.mark.auto_workers
def test_workers_auto_is_the_default_and_matches_a_serial_run(setup, tmp_path, capsys, monkeypatch):
    """No --workers: one process per core (at most one per target), the outputs byte for byte a serial run's."""
    from medshot.cli import workers

    t, targets, serial = setup
    chosen, started = [], []
    real = workers._in_processes
    monkeypatch.setattr(workers, "cores", lambda: 2)  # as on a 2-core machine, whatever this one has
    monkeypatch.setattr(workers, "_in_processes",
                        lambda work, pool, todo: chosen.append(pool) or real(work, pool, todo))

    class Counted(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(args[0] if args else kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Counted)
    out = tmp_path / "auto"
    code, stdout, err = run(["segment", "--template", t, "--out", out, targets, *FAST], capsys)
    assert code == 0, err
    # five targets: batch mode, whose pass 1, round(s) and final writing each run on the same 2 processes,
    # started once
    assert len(chosen) >= 3 and len({id(pool) for pool in chosen}) == 1 and chosen[0].count == 2
    assert started == [2] and "5 targets:" in stdout
    assert_same_as_serial(out, serial)
    assert workers.auto_workers(1, 2) == 1 and workers.auto_workers(40, 2) == 2
    monkeypatch.setattr(workers, "_available_memory", lambda: 5 * 2**30)  # volumes: one worker per 4 GB free
    assert workers.auto_workers(40, 3) == 1 and workers.auto_workers(40, 2) == 2


@pytest.mark.auto_workers
def test_workers_auto_runs_here_when_the_shot_cannot_travel(setup, tmp_path, capsys, monkeypatch):
    from medshot.cli import workers

    def refuse(shot):
        raise workers.MedshotError("this backbone/segmenter cannot be sent to worker processes (test)")

    t, targets, serial = setup
    monkeypatch.setattr(workers, "cores", lambda: 2)
    monkeypatch.setattr(workers, "_ship", refuse)
    out = tmp_path / "here"
    code, _, err = run(["segment", "--template", t, "--out", out, targets, *FAST], capsys)
    assert code == 0 and "targets run one after another here" in err
    assert_same_as_serial(out, serial)
    code, _, err = run(["segment", "--template", t, "--out", tmp_path / "n", "--workers", "2", targets, *FAST],
                       capsys)
    assert code == 2 and "cannot be sent to worker processes" in err  # asked for explicitly: an error
    with pytest.raises(SystemExit) as exit_:  # argparse's own refusal
        main(["segment", "--template", str(t), "--out", str(tmp_path / "x"), "--workers", "many", str(targets)])
    assert exit_.value.code == 2 and "expected a whole number or 'auto'" in capsys.readouterr().err
