"""The template panel: a template annotated through it saves the JSON ``medshot template`` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

napari = pytest.importorskip("napari")

import nibabel as nib  # noqa: E402
from napari_support import open_panel, register_plugin  # noqa: E402
from PIL import Image  # noqa: E402

from medshot.cli import main  # noqa: E402
from medshot.core.errors import MedshotError  # noqa: E402
from medshot.data.read import read_image, read_label_map  # noqa: E402
from medshot.napari.template_panel import TemplatePanel  # noqa: E402
from medshot.synthetic import LANDMARK_NAMES  # noqa: E402
from medshot.synthetic3d import Phantom3D, grid_affine, sample_phantom  # noqa: E402


@pytest.fixture(autouse=True)
def plugin():
    register_plugin()


def _panel(viewer, path) -> TemplatePanel:
    return open_panel(viewer, path, TemplatePanel)


def _cli_inputs(folder, names, points, label_names):
    lm = folder / "lm.csv"
    cols = "name,x,y" if points.shape[1] == 2 else "name,i,j,k"
    lm.write_text(cols + "\n" + "".join(f"{n},{','.join(repr(float(v)) for v in p)}\n" for n, p in zip(names, points)))
    ln = folder / "names.csv"
    ln.write_text("label,name\n" + "".join(f"{k},{v}\n" for k, v in label_names.items()))
    return lm, ln


def test_2d_template_through_the_panel_equals_medshot_template(make_napari_viewer, tmp_path, template_files,
                                                               phantom, capsys):
    image = template_files[0]
    viewer = make_napari_viewer()
    panel = _panel(viewer, image)
    panel.ensure_layers()
    rc = dict(zip(LANDMARK_NAMES, phantom.landmarks_xy[:, ::-1]))  # (row, col)
    # placed out of order and misnamed, then renamed and moved into place, as a user would
    panel.add_landmark("base", rc["base"])
    panel.add_landmark("tip", rc["apex"])
    panel.add_landmark("left notch", rc["left notch"])
    panel.add_landmark("right notch", rc["right notch"])
    panel.rename_landmark(1, "apex")
    for i in range(3):
        panel.move_landmark(i, 1)
    assert panel.landmark_names() == list(LANDMARK_NAMES)
    assert [panel.landmark_list.item(i).text() for i in range(4)] == list(LANDMARK_NAMES)
    panel.mask_layer.data = phantom.mask.astype(np.int32)  # what painting leaves
    panel.set_label_name(1, "organ A")
    panel.set_label_name(2, "organ B")
    out = tmp_path / "t"
    out.mkdir()
    saved = panel.save_template(out / "template.json")
    mask = out / "template_mask.png"
    np.testing.assert_array_equal(np.asarray(Image.open(mask)), phantom.mask)

    lm, names = _cli_inputs(tmp_path, LANDMARK_NAMES, phantom.landmarks_xy, {1: "organ A", 2: "organ B"})
    assert main(["template", str(image), "--mask", str(mask), "--landmarks", str(lm), "--label-names", str(names),
                 "--out", str(out / "cli.json")]) == 0
    assert saved.read_text() == (out / "cli.json").read_text()


def test_points_placed_with_napari_tools_and_a_reopened_template(make_napari_viewer, tmp_path, template_files,
                                                                 phantom):
    image = template_files[0]
    viewer = make_napari_viewer()
    panel = _panel(viewer, image)
    panel.ensure_layers()
    (x0, y0), (x1, y1) = phantom.landmarks_xy[:2]
    panel.name_edit.setText("apex")
    panel.landmarks_layer.add([[y0, x0]])  # what napari's add tool does on a click
    panel.landmarks_layer.add([[y1, x1]])  # the typed name is taken: the next point is L2
    assert panel.landmark_names() == ["apex", "L2"]
    panel.prompt_label.setValue(2)
    panel.negative_radio.setChecked(True)
    panel.prompts_layer.add([[90.0, 140.0]])
    panel.add_prompt(2, (95.0, 141.0), positive=True)  # (row, col)
    panel.mask_layer.data = phantom.mask.astype(np.int32)
    first = panel.save_template(tmp_path / "a.json")
    spec = json.loads(first.read_text())
    by_label = {p["label"]: p for p in spec["prompts"]}
    assert by_label[2] == {"label": 2, "positive": [[141.0, 95.0]], "negative": [[140.0, 90.0]]}
    assert len(by_label[1]["positive"]) == 5 and len(by_label[1]["negative"]) == 4  # sampled, as the CLI does
    assert spec["labels"] == {"1": "label 1", "2": "label 2"}

    viewer2 = make_napari_viewer()
    again = _panel(viewer2, first)
    assert again.landmark_names() == ["apex", "L2"] and again.label_names() == {1: "label 1", 2: "label 2"}
    second = again.save_template(tmp_path / "b.json")
    respec = json.loads(second.read_text())
    assert respec.pop("mask") == "b_mask.png" and spec.pop("mask") == "a_mask.png"
    assert respec == spec


def test_volume_template_through_the_panel_equals_medshot_template(make_napari_viewer, tmp_path, capsys):
    ph = Phantom3D(60.0, seed=1)
    shape = (30, 32, 24)
    aff = grid_affine(shape, (2.0, 1.9, 2.5), (1, 2, 3), axcodes="PLI")
    image, labels = sample_phantom(ph, shape, aff)
    nib.save(nib.Nifti1Image(image, aff), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(labels, aff), tmp_path / "painted.nii.gz")
    viewer = make_napari_viewer()
    panel = _panel(viewer, tmp_path / "v.nii.gz")
    assert panel.prompt_box.isVisibleTo(panel)  # volume templates hold prompt points too, as 2D ones
    panel.ensure_layers()
    assert panel.prompts_layer is not None and panel.prompts_layer.ndim == 3
    ijk = np.array([[3.0, 4.0, 5.0], [20.5, 10.25, 7.0], [29.0, 0.0, 23.0]])  # the file's voxels
    for name, p in zip(("a", "b", "c"), panel.frame.source.source_to_index(ijk)):
        panel.add_landmark(name, p)
    volume = read_image(tmp_path / "v.nii.gz")
    canonical = read_label_map(tmp_path / "painted.nii.gz", volume)[0]
    panel.mask_layer.data = panel.frame.to_display(canonical).astype(np.int32)
    panel.set_label_name(2, "brainstem")
    out = tmp_path / "t"
    out.mkdir()
    saved = panel.save_template(out / "vt.json")
    written = nib.load(out / "vt_mask.nii.gz")
    np.testing.assert_allclose(written.affine, aff)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels)

    lm, names = _cli_inputs(tmp_path, ["a", "b", "c"], ijk, {1: "label 1", 2: "brainstem"})
    assert main(["template", str(tmp_path / "v.nii.gz"), "--mask", str(out / "vt_mask.nii.gz"), "--landmarks",
                 str(lm), "--label-names", str(names), "--out", str(out / "cli.json")]) == 0
    assert saved.read_text() == (out / "cli.json").read_text()


def test_save_refuses_what_the_cli_refuses(make_napari_viewer, tmp_path, template_files, phantom):
    viewer = make_napari_viewer()
    panel = _panel(viewer, template_files[0])
    with pytest.raises(MedshotError, match="nothing to save"):
        panel.save_template(tmp_path / "t.json")
    panel.add_landmark("a", (10.0, 10.0))
    panel.add_landmark("b", (20.0, 10.0))
    panel.rename_landmark(1, "a")
    with pytest.raises(MedshotError, match="repeat"):
        panel.save_template(tmp_path / "t.json")
    panel.rename_landmark(1, "b")
    panel.landmarks_layer.data = np.array([[10.0, 10.0], [10.0, 5000.0]])
    panel.mask_layer.data = phantom.mask.astype(np.int32)
    with pytest.raises(MedshotError, match="outside"):
        panel.save_template(tmp_path / "t.json")
    # a failed save leaves no mask (nor template) behind
    assert not list(tmp_path.glob("t.json")) + list(tmp_path.glob("t_*")), list(tmp_path.iterdir())
    panel.path_edit.setText(str(tmp_path / "t.json"))
    panel._save_clicked()  # the button reports instead of raising
    assert "not saved" in panel.status.text()
