"""Several templates: fusion of label maps and landmarks, top-K, the CLI, and ``medshot select``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

import medshot
from medshot.cli.main import main
from medshot.core.feature_map import FeatureMap
from medshot.core.registry import Entry
from medshot.data.write import save_png
from medshot.evaluation.metrics import dice_per_label, normalized_distance
from medshot.features.catalogue import BACKBONES
from medshot.pipeline.fusion import fuse_label_maps, geometric_median, relative_weights
from medshot.synthetic import random_warp


def _write_template(folder, name, image, mask, landmarks_xy):
    save_png(folder / f"{name}.png", (np.clip(image, 0, 1) * 255).astype(np.uint8))
    save_png(folder / f"{name}_mask.png", mask)
    (folder / f"{name}.csv").write_text("name,x,y\n" + "".join(f"p{i},{x},{y}\n" for i, (x, y) in
                                                              enumerate(landmarks_xy)))
    template = medshot.Template.build(folder / f"{name}.png", folder / f"{name}_mask.png", folder / f"{name}.csv")
    template.save(folder / f"{name}.json")
    return template


def _wrong_anatomy(phantom, seed=0):
    """Another anatomy annotated with the same labels and landmark names: smooth texture, squares, random points."""
    rng = np.random.default_rng(seed)
    image = np.clip(ndimage.gaussian_filter(rng.random(phantom.image.shape), 6) * 4 - 1.5, 0, 1)
    mask = np.zeros_like(phantom.mask)
    for k, value in enumerate(v for v in np.unique(phantom.mask) if v):
        mask[10 + 30 * k:35 + 30 * k, 10:40] = value
    return image, mask, rng.uniform(20, 150, size=phantom.landmarks_xy.shape)


@pytest.fixture(scope="module")
def three(tmp_path_factory, phantom):
    """Two warped copies of the phantom and one template of another anatomy, saved as JSON."""
    folder = tmp_path_factory.mktemp("three")
    templates = []
    for name, seed in (("a", 5), ("b", 6)):
        case, _ = random_warp(phantom, seed=seed)
        templates.append(_write_template(folder, name, case.image, case.mask, case.landmarks_xy))
    templates.append(_write_template(folder, "wrong", *_wrong_anatomy(phantom)))
    return folder, templates


def test_a_wrong_template_gets_no_weight_and_fusion_holds(three, phantom):
    _, templates = three
    shot = medshot.OneShot(templates)
    assert isinstance(shot, medshot.Ensemble)
    for seed in (1, 2):
        target, _ = random_warp(phantom, seed=seed)
        result = shot.run(target.image)
        assert min(dice_per_label(result.label_map, target.mask).values()) >= 0.9
        ned = normalized_distance(result.landmark_points, target.landmarks_xy[:, ::-1], target.image.shape)
        assert ned.max() < 0.02, ned
        assert result.templates["wrong.png"] < 0.02, result.templates
        assert result.templates["a.png"] > 0.3 and result.templates["b.png"] > 0.3
        assert sum(result.templates.values()) == pytest.approx(1.0)
        assert all(0 <= s <= 1 for s in result.scores.values())


def test_top_k_keeps_the_best_verified_templates(three, phantom):
    _, templates = three
    target, _ = random_warp(phantom, seed=3)
    result = medshot.OneShot(templates, top_k=1).run(target.image)
    assert sorted(result.templates.values())[:2] == [0.0, 0.0]  # two left out
    assert result.templates["wrong.png"] == 0.0
    assert min(dice_per_label(result.label_map, target.mask).values()) >= 0.9


def test_geometric_median_ignores_one_far_point():
    points = np.array([[10.0, 10.0], [10.4, 9.8], [9.8, 10.2], [90.0, 5.0]])
    m = geometric_median(points, np.ones(4))
    assert np.linalg.norm(m - [10, 10]) < 0.5  # the mean would be 20 pixels off
    assert np.linalg.norm(geometric_median(points, [1, 1, 1, 0]) - points[:3].mean(0)) < 0.5


def test_weighted_vote_follows_the_weights_and_local_agreement():
    a = np.zeros((6, 6), np.uint8)
    a[1:4, 1:4] = 1
    b = np.zeros_like(a)
    b[2:5, 2:5] = 1
    assert np.array_equal(fuse_label_maps([a, b], [{1: 1.0}, {1: 0.01}]), a)
    assert np.array_equal(fuse_label_maps([a, b], [{1: 0.01}, {1: 1.0}]), b)
    local = [np.ones(a.shape, np.float32), np.ones(a.shape, np.float32)]
    local[0][:, 3:] = 0.01  # template a disagrees with the target on the right: b decides there
    fused = fuse_label_maps([a, b], [{1: 1.0}, {1: 0.5}], local)
    assert fused[2, 4] == 1 and fused[1, 3] == 0 and fused[1, 1] == 1
    w = relative_weights([0.9, 0.85, 0.1])
    assert w[0] == 1 and 0.5 < w[1] < 1 and w[2] < 1e-3


def test_cli_segment_and_localize_with_several_templates(three, phantom, tmp_path):
    folder, _ = three
    targets = tmp_path / "targets"
    targets.mkdir()
    for seed in (1, 2):
        case, _ = random_warp(phantom, seed=seed)
        save_png(targets / f"t{seed}.png", (case.image * 255).astype(np.uint8))
    flags = [x for n in ("a", "b", "wrong") for x in ("--template", str(folder / f"{n}.json"))]
    assert main(["segment", *flags, "--top-k", "2", "--out", str(tmp_path / "seg"), str(targets), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "seg" / "results.csv")))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    weights = dict(item.split(":") for item in rows[0]["templates"].split(";"))
    assert float(weights["wrong.png"]) == 0.0 and float(weights["a.png"]) > 0.3
    (settings,) = json.loads((tmp_path / "seg" / "medshot-run.json").read_text())["settings"].values()
    assert settings["top_k"] == 2 and settings["template_3"].endswith("wrong.json")
    assert main(["localize", *flags, "--out", str(tmp_path / "loc"), str(targets), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "loc" / "landmarks.csv")))
    assert len(rows) == 2 * len(phantom.landmarks_xy) and "templates" in rows[0]


def test_cli_refuses_bad_top_k(three, tmp_path, capsys):
    folder, _ = three
    code = main(["segment", "--template", str(folder / "a.json"), "--template", str(folder / "b.json"),
                 "--top-k", "0", "--out", str(tmp_path / "o"), str(folder / "a.png")])
    assert code == 2
    assert "top-k" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class NoiseBackbone:
    """A stand-in backbone whose descriptors are noise: any selection must prefer a real one."""

    name = "noise"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def __call__(self, image):
        shape = image.shape[:2]
        data = self.rng.standard_normal((8, *shape)).astype(np.float32)
        return FeatureMap(data, (1.0, 1.0), (0.0, 0.0), shape)


@pytest.fixture
def noise_backbone():
    BACKBONES.register(Entry("noise", NoiseBackbone, family="test", description="noise"))
    yield "noise"
    BACKBONES._entries.pop("noise", None)


def test_select_picks_the_real_backbone_and_writes_it(three, noise_backbone, tmp_path, capsys):
    folder, _ = three
    flags = [x for n in ("a", "b") for x in ("--template", str(folder / f"{n}.json"))]
    copies = []
    for n in ("a", "b"):  # select writes into the templates: work on copies
        spec = json.loads((folder / f"{n}.json").read_text())
        spec["image"], spec["mask"] = str(folder / spec["image"]), str(folder / spec["mask"])
        (tmp_path / f"{n}.json").write_text(json.dumps(spec))
        copies.append(tmp_path / f"{n}.json")
    flags = [x for c in copies for x in ("--template", str(c))]
    assert main(["select", *flags, "--backbones", "noise,classical"]) == 0
    out = capsys.readouterr().out
    assert "chosen: classical/classical" in out and "noise/classical" in out
    for c in copies:
        assert json.loads(c.read_text())["method"] == {"backbone": "classical", "segmenter": "classical"}
    # a later run takes the choice from the template (noise first: it would be chosen only if it were better)
    spec = json.loads(copies[0].read_text())
    spec["method"]["backbone"] = "noise"
    copies[0].write_text(json.dumps(spec))
    assert main(["segment", "--template", str(copies[0]), "--out", str(tmp_path / "o"), str(folder / "b.png"),
                 "--quiet"]) == 0
    (settings,) = json.loads((tmp_path / "o" / "medshot-run.json").read_text())["settings"].values()
    assert settings["backbone"] == "noise"


@pytest.mark.parametrize("backbones", ["classical", "classical,classical", "classical,no_such_backbone"])
def test_select_with_one_candidate_writes_no_method(three, tmp_path, capsys, backbones):
    # nothing was compared: a "method" in the templates would pin later runs to an unchosen method
    folder, _ = three
    copies = []
    for n in ("a", "b"):
        spec = json.loads((folder / f"{n}.json").read_text())
        spec["image"], spec["mask"] = str(folder / spec["image"]), str(folder / spec["mask"])
        (tmp_path / f"{n}.json").write_text(json.dumps(spec))
        copies.append(tmp_path / f"{n}.json")
    before = [c.read_bytes() for c in copies]
    assert main(["select", *[x for c in copies for x in ("--template", str(c))], "--backbones", backbones]) == 0
    captured = capsys.readouterr()
    assert "nothing to choose" in captured.err and "classical/classical" in captured.out
    assert "chosen:" not in captured.out
    assert [c.read_bytes() for c in copies] == before


def test_select_needs_two_templates(three, capsys):
    folder, _ = three
    assert main(["select", "--template", str(folder / "a.json"), "--no-write"]) == 2
    assert "at least two" in capsys.readouterr().err


def test_a_malformed_method_entry_is_a_one_line_error(three, tmp_path, capsys):
    folder, _ = three
    spec = json.loads((folder / "a.json").read_text())
    spec["image"], spec["mask"] = str(folder / spec["image"]), str(folder / spec["mask"])
    spec["method"] = {"backbone": "classical", "learning_rate": 3}
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    assert main(["segment", "--template", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o"),
                 str(folder / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "method" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _match_fully(ensemble, image):
    """Ensemble.match before issue 20: every template matched and deformed, ranked on the final score."""
    matched = [(m, *m.correspond(image)) for m in ensemble.members]
    order = np.argsort([-corr.score for _, _, _, corr in matched], kind="stable")[:ensemble.top_k or len(matched)]
    return [matched[i] for i in order], order


@pytest.mark.parametrize("top_k,seed", [(1, 5), (2, 3)])
def test_top_k_ranks_on_the_affine_and_deforms_only_the_k_best(three, phantom, top_k, seed, monkeypatch):
    """Ranked on each template's verified affine, the K kept are those full matching keeps (K=2: the two
    of the target's anatomy, never the other anatomy), only they are deformed, and the fused result is
    exactly that of full matching. (K=1 with a copy of template a as target: full matching keeps b, whose
    verification is 0.478 against a's 0.448; scores of different templates are each their own verifier's.)"""
    import importlib

    correspond_module = importlib.import_module("medshot.match.correspond")
    from medshot.pipeline import oneshot

    _, templates = three
    target, _ = random_warp(phantom, seed=seed)  # seed 5: template a's own image
    shot = medshot.OneShot(templates, top_k=top_k)
    deformed = []
    real = oneshot.deform_verified
    for module in (oneshot, correspond_module):  # the 2D path deforms inside correspond()
        monkeypatch.setattr(module, "deform_verified", lambda *a, **k: deformed.append(1) or real(*a, **k))
    kept, order = shot.match(medshot.data.image.from_array(target.image))
    assert len(deformed) == top_k  # the others stopped at their affine
    deformed.clear()
    full_kept, full_order = _match_fully(shot, medshot.data.image.from_array(target.image))
    assert len(deformed) == len(templates)
    assert list(order) == list(full_order)
    assert 2 not in order  # never the template of another anatomy
    for (_, _, _, corr), (_, _, _, full) in zip(kept, full_kept):
        np.testing.assert_array_equal(corr.backward, full.backward)
        assert corr.score == full.score
    cheap = shot.run(target.image)
    monkeypatch.setattr(shot, "match", lambda image: _match_fully(shot, image))
    before = shot.run(target.image)
    np.testing.assert_array_equal(cheap.label_map, before.label_map)
    assert cheap.templates == before.templates and cheap.scores == before.scores
    np.testing.assert_array_equal(cheap.landmark_points, before.landmark_points)
