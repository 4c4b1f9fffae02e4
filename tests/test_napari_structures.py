"""The napari reader opens DICOM SEG and RTSTRUCT files as Labels layers on the image they were drawn on."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("highdicom", reason="DICOM SEG writing and reading need the dicom extra (highdicom)")

from napari_support import register_plugin  # noqa: E402

from medshot.core.errors import MedshotError  # noqa: E402
from medshot.data.read import read_image  # noqa: E402
from medshot.napari.layers import frame_of, role_of  # noqa: E402
from medshot.napari.reader import read  # noqa: E402
from medshot.synthetic3d import grid_affine, write_dicom_series  # noqa: E402

NAMES = {1: "left blob", 2: "right blob"}


@pytest.fixture(autouse=True)
def plugin():
    register_plugin()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A PRI series in ``series/``, its SEG and RTSTRUCT in the sibling folder ``structures/``; the label map."""
    from medshot.data.dicom_out import Structure, dicom_outputs

    root = tmp_path_factory.mktemp("structures")
    shape = (24, 20, 8)
    aff = grid_affine(shape, (0.9, 0.8, 2.5), (10, 20, -30), axcodes="PRI")
    write_dicom_series(np.indices(shape)[0] * 7.0 + np.indices(shape)[2], aff, root / "series")
    image = read_image(root / "series")
    labels = np.zeros(image.shape, np.uint16)
    labels[3:9, 4:12, 2:6], labels[12:20, 6:14, 3:7] = 1, 2  # canonical (RAS+) array indices
    structures = [Structure(v, n, c) for (v, n), c in zip(NAMES.items(), [(230, 159, 0), (86, 180, 233)])]
    (root / "structures").mkdir()
    for name, data in dicom_outputs(image, labels, structures, "test").items():
        (root / "structures" / name.replace("series_", "")).write_bytes(data)
    return root, labels


def _check_labels(layer, labels):
    assert role_of(layer) == "mask" and layer.metadata["medshot"]["label_names"] == NAMES
    np.testing.assert_array_equal(frame_of(layer).from_display(layer.data), labels)


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_structures_alone_open_with_the_series_found_beside_them(make_napari_viewer, case, kind):
    root, labels = case
    viewer = make_napari_viewer()
    image, structures = viewer.open(str(root / "structures" / f"{kind}.dcm"), plugin="medshot")
    assert role_of(image) == "image" and structures.__class__.__name__ == "Labels"
    assert frame_of(structures) is frame_of(image)  # the template panel pairs them
    np.testing.assert_allclose(structures.scale, image.scale)
    np.testing.assert_allclose(structures.translate, image.translate)
    _check_labels(structures, labels)


def test_structures_land_on_the_series_already_open(make_napari_viewer, case):
    root, labels = case
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(root / "series"), plugin="medshot")
    (structures,) = viewer.open(str(root / "structures" / "seg.dcm"), plugin="medshot")
    assert frame_of(structures) is frame_of(image) and len(viewer.layers) == 2
    _check_labels(structures, labels)


def test_structures_read_together_with_their_series(case):
    root, labels = case
    (_, _, kind1), (data, kwargs, kind2) = read([str(root / "series"), str(root / "structures" / "rtstruct.dcm")])
    assert (kind1, kind2) == ("image", "labels")
    np.testing.assert_array_equal(kwargs["metadata"]["medshot"]["frame"].from_display(data), labels)


def test_structures_without_their_image_are_refused_with_one_line(case, tmp_path):
    root, _ = case
    lone = tmp_path / "a" / "b"
    lone.mkdir(parents=True)
    (lone / "seg.dcm").write_bytes((root / "structures" / "seg.dcm").read_bytes())
    with pytest.raises(MedshotError, match="found no DICOM image it was drawn on") as err:
        read(str(lone / "seg.dcm"))
    assert "\n" not in str(err.value) and "seg.dcm" in str(err.value)
