"""Batch mode (issue 18): confident targets become pseudo-templates for the others."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medshot import OneShot, Template, from_array
from medshot.cli.main import main
from medshot.evaluation.metrics import dice
from medshot.pipeline.batch import Batch, BatchOptions, Found, Plan, confidence_of, helper_weights, nearest
from medshot.pipeline.ensemble import fuse_results
from medshot.pipeline.result import LandmarkResult, TargetResult
from medshot.synthetic import make_phantom, place, swirl

CHAIN = (0, 60, 120, 180, 240, 300, 360)  # degrees of swirl: each step small, the far end beyond one match


def _template(image: np.ndarray, mask: np.ndarray) -> Template:
    return Template.from_image(from_array(image), mask=mask, labels={1: "organ 1", 2: "organ 2"})


@pytest.fixture(scope="module")
def chain():
    case = make_phantom((160, 176))
    return [swirl(case, degrees, seed=i) for i, degrees in enumerate(CHAIN)]


@pytest.mark.slow
def test_a_chain_of_targets_carries_the_labels_where_one_match_fails(chain):
    shot = OneShot(_template(chain[0].image, chain[0].mask))
    targets = [from_array(c.image) for c in chain[1:]]
    single = [shot.run(t) for t in targets]
    batch = Batch(shot, BatchOptions(min_targets=3))
    results = batch.run(targets)
    far = [i for i, degrees in enumerate(CHAIN[1:]) if degrees >= 240]
    for i in far:
        truth = chain[i + 1].mask
        assert dice(single[i].label_map == 1, truth == 1) < 0.5  # one match fails ...
        assert dice(results[i].label_map == 1, truth == 1) >= 0.9, CHAIN[i + 1]  # ... the chain recovers
    # the original template always counts, a target never serves as its own template
    for i, result in enumerate(results):
        assert "image" in result.templates
        assert f"target {i + 1}" not in result.templates
    assert "pseudo-templates" in batch.note


@pytest.mark.slow
def test_an_outlier_target_is_never_a_pseudo_template():
    case = make_phantom((128, 144))
    targets = [from_array(place(case, angle, 1.0, seed=i).image) for i, angle in enumerate((10, -10, 20, -20))]
    rng = np.random.default_rng(0)
    outlier = from_array(np.clip(np.kron(rng.random((8, 9)), np.ones((16, 16))), 0, 1).astype(np.float32))
    shot = OneShot(_template(case.image, case.mask))
    batch = Batch(shot, BatchOptions(min_targets=3))
    results = batch.run([*targets, outlier])
    assert batch.plan.outliers == {4}  # another image than the template's kind ...
    assert 4 not in batch.plan.pool
    for result in results[:-1]:
        assert "target 5" not in result.templates  # ... is nobody's template
    for result in results[:-1]:
        assert len(result.templates) > 1  # the others did get pseudo-templates
    # a pseudo-template is built once: a later round (a command-line worker) need not reread its image
    helpers = {name for result in results for name in result.templates} - {"image"}
    assert helpers
    for name in helpers:
        assert not batch.needs_image(name, {})
    assert batch.needs_image("target 5", {})
    assert not batch.needs_image("target 5", {"target 5": None})  # matched with it in an earlier round


@pytest.mark.slow
def test_the_template_among_the_targets_gets_itself_back():
    case = make_phantom((96, 112))
    shot = OneShot(_template(case.image, case.mask))
    others = [from_array(swirl(place(case, 8 * (i - 1.5), 1.0, seed=i), 25 * i, seed=i).image) for i in range(4)]
    batch = Batch(shot)
    itself = batch.run([from_array(case.image.copy()), *others])[0]
    assert len(itself.templates) > 1  # pseudo-templates did take part ...
    np.testing.assert_array_equal(itself.label_map, case.mask)  # ... and the template's own labels stay exact


def test_a_plan_never_gives_a_target_itself_and_breaks_ties_by_order():
    similarity = np.array([[1.0, 0.5, 0.5], [0.5, 1.0, 0.9], [0.5, 0.9, 1.0]])
    assert nearest(similarity, 0, [2, 1, 0], 2) == [1, 2]
    assert nearest(similarity, 1, [0, 1, 2], 1) == [2]
    plan = Plan(similarity, [0.9, 0.2, float("nan")], BatchOptions(neighbours=1, rounds=3))
    assert plan.pool == {0: 0}
    first = plan.next()
    assert first == {1: [0]}  # the failed target is never planned, the pool member has no other member
    assert plan.record({1: 0.8}) == [1]
    second = plan.next()
    assert second == {0: [1]}  # the new member is the first one's only neighbour; 1 keeps 0
    plan.record({0: 0.9})
    assert plan.next() is None


def _result(image, label_map, scores, landmarks=()):
    points = [LandmarkResult(name, np.array(p, float), np.zeros(3), c, True, "") for name, p, c in landmarks]
    return TargetResult(image, points, label_map, dict(scores))


def test_a_per_label_pool_helps_only_with_what_the_helper_is_sure_of():
    image = from_array(np.zeros((20, 20), np.float32))
    truth = np.zeros((20, 20), np.uint8)
    truth[2:8, 2:8], truth[12:18, 12:18] = 1, 2
    wrong = truth.copy()
    wrong[truth == 2] = 0
    wrong[2:8, 12:18] = 2  # sure of label 1, wrong and unsure about label 2 and landmark b
    helper = _result(image, wrong, {1: 0.9, 2: 0.3}, [("a", (5, 5), 0.8), ("b", (5, 15), 0.2)])
    found = Found(helper, None, confidence_of(helper, "label"))
    assert confidence_of(helper, "all") == pytest.approx(0.2)  # the old rule: it never joins ...
    assert found.confidence == pytest.approx(0.9)  # ... per label it joins with what it is sure of
    per_label = helper_weights(found, BatchOptions(pool="label"))
    assert per_label == {1: 0.9, 2: 0.0, "a": 0.8, "b": 0.0}
    assert helper_weights(found, BatchOptions()) == pytest.approx(0.9)  # "all": one factor, its confidence

    original = _result(image, truth, {1: 0.6, 2: 0.6}, [("a", (6, 6), 0.6), ("b", (15, 15), 0.6)])
    # the helper outweighs the original (x2) on what it is sure of, and has no say on label 2 / landmark b
    fused = fuse_results(image, [original, helper, helper], ["t", "h1", "h2"], None, [1.0, per_label, per_label])
    np.testing.assert_array_equal(fused.label_map == 2, truth == 2)
    points = {lm.name: lm.point for lm in fused.landmarks}
    np.testing.assert_allclose(points["b"], (15, 15))
    assert np.linalg.norm(points["a"] - np.array([5, 5])) < 0.1  # two helpers at (5, 5), the template at (6, 6)


def test_too_small_a_batch_is_the_plain_pass():
    case = make_phantom((96, 112))
    shot = OneShot(_template(case.image, case.mask))
    target = from_array(place(case, 5, 1.0, seed=1).image)
    batch = Batch(shot, BatchOptions(min_targets=3))
    [result] = batch.run([target])
    assert "plain pass" in batch.note
    np.testing.assert_array_equal(result.label_map, shot.run(target).label_map)


# -- command line --------------------------------------------------------------------------------------------


def _write_batch(folder: Path, n: int = 4) -> tuple[Path, list[Path]]:
    case = make_phantom((96, 112))
    folder.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray((case.image * 255).astype(np.uint8)).save(folder / "template.png")
    PILImage.fromarray(case.mask).save(folder / "template_mask.png")
    template = Template.build(folder / "template.png", folder / "template_mask.png",
                              label_names={1: "organ 1", 2: "organ 2"})
    template.save(folder / "template.json")
    targets = []
    for i in range(n):
        warped = swirl(place(case, 8 * (i - 1.5), 1.0, seed=i), 25 * i, seed=i)
        path = folder / f"target{i}.png"
        PILImage.fromarray((warped.image * 255).astype(np.uint8)).save(path)
        targets.append(path)
    return folder / "template.json", targets


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_cli_batch_mode_is_the_same_with_workers_and_resumes(tmp_path, capsys):
    template, targets = _write_batch(tmp_path / "in")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    args = ["segment", "--template", str(template), *map(str, targets), "--batch-min", "3", "--quiet"]
    assert main([*args, "--out", str(serial), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "pseudo-templates" in err
    assert main([*args, "--out", str(parallel), "--workers", "2"]) == 0
    for target in targets:
        name = target.stem + "_mask.png"
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()
    rows = _table(serial / "results.csv")
    assert [r["templates"] for r in rows] == [r["templates"] for r in _table(parallel / "results.csv")]
    for r in rows:
        assert r["templates"].startswith("template.png:")
        assert Path(r["target"]).name not in r["templates"]  # never its own template
    assert any(";" in r["templates"] for r in rows)  # pseudo-templates counted
    # the command line plans and fuses exactly as the Python API
    api = Batch(OneShot(Template.load(template)), BatchOptions(min_targets=3)).run(targets)
    for target, result in zip(targets, api):
        np.testing.assert_array_equal(np.asarray(PILImage.open(serial / (target.stem + "_mask.png"))),
                                      result.label_map)
    # a rerun with --resume redoes nothing and keeps the outputs
    before = {p: p.read_bytes() for p in serial.iterdir() if p.is_file() and p.suffix == ".png"}
    assert main([*args, "--out", str(serial), "--workers", "1", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "0 ok, 0 low_confidence, 0 failed, 4 skipped" in out
    assert {p: p.read_bytes() for p in before} == before
    # the outputs carry the user's umask like every other output
    mode = (serial / (targets[0].stem + "_mask.png")).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.slow
def test_cli_pixel_classifier_is_the_apis_and_resume_redoes_only_the_outputs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    template, targets = _write_batch(tmp_path / "in")
    out = tmp_path / "out"
    args = ["segment", "--template", str(template), *map(str, targets), "--batch-min", "3", "--quiet",
            "--out", str(out), "--workers", "1"]
    assert main([*args, "--batch-classifier", "on"]) == 0
    assert (out / ".medshot-batch" / "classifier.pkl").is_file()
    shot = OneShot(Template.load(template))
    on = Batch(shot, BatchOptions(min_targets=3, classifier=True)).run(targets)
    off = Batch(shot, BatchOptions(min_targets=3, classifier=False)).run(targets)
    assert any(r.evidence.get("classifier changed", 0) > 0 for r in on)
    assert any(not np.array_equal(a.label_map, b.label_map) for a, b in zip(on, off))

    def masks():
        return [np.asarray(PILImage.open(out / (t.stem + "_mask.png"))) for t in targets]

    for mask, result in zip(masks(), on):
        np.testing.assert_array_equal(mask, result.label_map)
    # the same with workers (every worker reads the one classifier the planning process trained)
    parallel = tmp_path / "parallel"
    assert main([*args[:-4], "--out", str(parallel), "--workers", "2", "--batch-classifier", "on"]) == 0
    for target in targets:
        name = target.stem + "_mask.png"
        assert (parallel / name).read_bytes() == (out / name).read_bytes()
    # turning it off on resume: pass 1 and the rounds are kept, the outputs are redone without it
    pass1 = {p: p.stat().st_mtime_ns for p in (out / ".medshot-batch" / "pass1").glob("*.found.pkl")}
    assert main([*args, "--batch-classifier", "off", "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in pass1} == pass1
    for mask, result in zip(masks(), off):
        np.testing.assert_array_equal(mask, result.label_map)


def test_cli_small_batch_says_it_runs_the_plain_pass(tmp_path, capsys):
    template, targets = _write_batch(tmp_path / "in", n=2)
    assert main(["segment", "--template", str(template), *map(str, targets), "--out", str(tmp_path / "out"),
                 "--workers", "1", "--quiet"]) == 0
    assert "plain pass" in capsys.readouterr().err
    assert "templates" not in _table(tmp_path / "out" / "results.csv")[0]


def test_cli_batch_mode_off_and_bad_options(tmp_path, capsys):
    template, targets = _write_batch(tmp_path / "in", n=2)
    assert main(["segment", "--template", str(template), *map(str, targets), "--out", str(tmp_path / "out"),
                 "--workers", "1", "--quiet", "--batch-mode", "off"]) == 0
    assert "batch mode" not in capsys.readouterr().err
    assert main(["segment", "--template", str(template), *map(str, targets), "--out", str(tmp_path / "bad"),
                 "--batch-neighbours", "0"]) == 2
    err = capsys.readouterr().err
    assert "--batch-neighbours must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_cli_classifier_without_scikit_learn_says_how_to_install(tmp_path, capsys, monkeypatch):
    import sys

    template, targets = _write_batch(tmp_path / "in", n=2)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    assert main(["segment", "--template", str(template), *map(str, targets), "--out", str(tmp_path / "out"),
                 "--batch-classifier", "on"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "medshot[learn]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- napari run panel's runner (no Qt) --------------------------------------------------------------------


@pytest.mark.slow
def test_run_panel_batch_mode_replaces_pass_one_with_the_batch_result(tmp_path):
    from medshot.napari.runner import run_targets

    template, targets = _write_batch(tmp_path / "in")
    yielded = list(run_targets(template, targets, tmp_path / "out", "segment", batch_mode=True))
    outcomes = [y for y in yielded if not isinstance(y, str)]
    notes = [y for y in yielded if isinstance(y, str)]
    assert [o.path for o in outcomes] == targets * 2  # pass 1, then the batch result of every target
    assert any("pseudo-templates" in note for note in notes)
    api = Batch(OneShot(Template.load(template)), BatchOptions(), landmarks=False).run(targets)
    for target, outcome, result in zip(targets, outcomes[4:], api):
        np.testing.assert_array_equal(outcome.label_map, result.label_map)
        np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "out" / (target.stem + "_mask.png"))),
                                      result.label_map)
    assert len(_table(tmp_path / "out" / "review.csv")) == 4


@pytest.mark.slow
def test_run_panel_batch_mode_cancelled_in_the_rounds_keeps_pass_one(tmp_path):
    from medshot.napari.runner import run_targets

    template, targets = _write_batch(tmp_path / "in")
    seen = []
    run = run_targets(template, targets, tmp_path / "out", "segment", batch_mode=True,
                      cancelled=lambda: len(seen) >= 4)  # the user cancels once pass 1 is done
    for y in run:
        if not isinstance(y, str):
            seen.append(y)
    assert [o.path for o in seen] == targets  # no batch results ...
    shot = OneShot(Template.load(template))
    for target in targets:  # ... and pass 1's outputs stay
        np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "out" / (target.stem + "_mask.png"))),
                                      shot.run(target, landmarks=False).label_map)
