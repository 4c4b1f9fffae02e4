"""The template panel: mark landmarks, prompt points and label maps on one image and save ``template.json``.

The panel works on layers made by medshot's reader (they carry the image's :class:`~.layers.Frame`):

* **Landmarks**: a Points layer whose ``name`` feature names each point. Place points with
  napari's add tool (each new point takes the name typed in the panel, or the next ``L<n>``),
  rename them in the list, reorder them with Up/Down, delete them.
* **Prompts**: positive and negative points, each with the label it belongs to.
* **Mask**: a Labels layer to paint (2D or 3D) and a table of label names.

"Save template" writes the mask beside the JSON (``<json stem>_mask.png``, or ``.nii.gz`` in the
image's geometry for NIfTI images and volumes) and the JSON itself through the same
:class:`~medshot.data.template.Template` code as ``medshot template``, for 2D images and volumes
alike; labels without prompt points get them sampled from the mask as ``medshot template`` does
(5 positive, 4 negative), so the JSON is the one the CLI would write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import MedshotError
from .layers import NEGATIVE_COLOR, POSITIVE_COLOR, frame_of, landmarks_layer, mask_layer, prompts_layer, role_of
from .template_io import data_in_frame, save_template
from .widgets import LabelNameTable, with_button


class TemplatePanel(QWidget):
    """Dock widget that annotates a template image (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    template_saved = Signal(str)

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image_layer = self.landmarks_layer = self.prompts_layer = self.mask_layer = None
        self._build()
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self._layers_changed()

    # -- widgets -----------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._image_chosen)
        row.addWidget(QLabel("Image"))
        row.addWidget(self.image_combo, 1)
        layout.addLayout(row)

        box = QGroupBox("Landmarks (in order)")
        v = QVBoxLayout(box)
        self.landmark_list = QListWidget()
        self.landmark_list.setEditTriggers(QAbstractItemView.DoubleClicked | QAbstractItemView.EditKeyPressed)
        self.landmark_list.itemChanged.connect(self._item_renamed)
        v.addWidget(self.landmark_list)
        row = QHBoxLayout()
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name of the next point")
        self.name_edit.textChanged.connect(lambda _: self._update_defaults())
        place = QPushButton("Place")
        place.clicked.connect(lambda: self._place(self.landmarks_layer))
        row.addWidget(self.name_edit, 1)
        row.addWidget(place)
        v.addLayout(row)
        row = QHBoxLayout()
        for text, slot in (("Up", lambda: self._move_selected(-1)), ("Down", lambda: self._move_selected(1)),
                           ("Delete", self._delete_selected)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            row.addWidget(button)
        v.addLayout(row)
        layout.addWidget(box)

        self.prompt_box = QGroupBox("Prompt points")
        row = QHBoxLayout(self.prompt_box)
        self.prompt_label = QSpinBox()
        self.prompt_label.setRange(1, 65535)
        self.prompt_label.valueChanged.connect(lambda _: self._update_defaults())
        self.positive_radio, self.negative_radio = QRadioButton("positive"), QRadioButton("negative")
        self.positive_radio.setChecked(True)
        self.positive_radio.toggled.connect(lambda _: self._update_defaults())
        place = QPushButton("Place")
        place.clicked.connect(lambda: self._place(self.prompts_layer))
        for w in (QLabel("label"), self.prompt_label, self.positive_radio, self.negative_radio, place):
            row.addWidget(w)
        layout.addWidget(self.prompt_box)

        box = QGroupBox("Labels (paint them on the mask layer)")
        v = QVBoxLayout(box)
        self.label_table = LabelNameTable()
        self.label_table.currentCellChanged.connect(lambda r, *_: self._label_row_chosen(r))
        v.addWidget(self.label_table)
        row = QHBoxLayout()
        add, paint = QPushButton("Add label"), QPushButton("Paint")
        add.clicked.connect(lambda: self.set_label_name(self.label_table.next_label(), ""))
        paint.clicked.connect(self._paint)
        row.addWidget(add)
        row.addWidget(paint)
        v.addLayout(row)
        layout.addWidget(box)

        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("template.json")
        save = QPushButton("Save template")
        save.clicked.connect(self._save_clicked)
        row.addWidget(with_button(self.path_edit, "…", self._browse), 1)
        row.addWidget(save)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- layers ------------------------------------------------------------------------------

    def _image_layers(self) -> list:
        return [layer for layer in self.viewer.layers if role_of(layer) == "image" and frame_of(layer) is not None]

    def _layers_changed(self, *_) -> None:
        images = self._image_layers()
        current = self.image_layer
        self.image_combo.blockSignals(True)  # a list refresh is no choice of the user's
        self.image_combo.clear()
        for layer in images:
            self.image_combo.addItem(layer.name)
        if any(layer is current for layer in images):
            self.image_combo.setCurrentIndex([id(layer) for layer in images].index(id(current)))
        self.image_combo.blockSignals(False)
        for attr in ("landmarks_layer", "prompts_layer", "mask_layer"):  # forget deleted layers
            kept = getattr(self, attr)
            if kept is not None and not any(layer is kept for layer in self.viewer.layers):
                setattr(self, attr, None)
        if images and not any(layer is current for layer in images):
            self.set_image_layer(images[0])

    def _image_chosen(self, index: int) -> None:
        images = self._image_layers()
        if 0 <= index < len(images) and images[index] is not self.image_layer:
            self.set_image_layer(images[index])

    @property
    def frame(self):
        return frame_of(self.image_layer) if self.image_layer is not None else None

    def set_image_layer(self, layer) -> None:
        """Annotate ``layer`` (an image layer from medshot's reader); adopt its template layers, if any."""
        self.image_layer = layer
        frame = frame_of(layer)
        found = {role_of(other): other for other in self.viewer.layers if frame_of(other) is frame}
        self.landmarks_layer = found.get("landmarks")
        self.prompts_layer = found.get("prompts")
        self.mask_layer = found.get("mask")
        self.label_table.setRowCount(0)
        names = dict(frame.info.get("labels") or {})
        if self.mask_layer is not None:
            present = sorted(int(v) for v in np.unique(self.mask_layer.data) if v)
            names = {label: names.get(label, f"label {label}") for label in present} | names
        for label in sorted(names):
            self.set_label_name(label, names[label])
        if frame.info.get("template_json") and not self.path_edit.text():
            self.path_edit.setText(str(frame.info["template_json"]))
        for layer_ in (self.landmarks_layer, self.prompts_layer):
            if layer_ is not None:
                self._watch(layer_)
        self._refresh_landmarks()
        self._update_defaults()

    def ensure_layers(self) -> None:
        """Add empty landmarks, prompts and mask layers for the current image where it has none."""
        frame = self.frame
        if frame is None:
            raise MedshotError("open an image with medshot's reader first (File ▸ Open, or `medshot annotate IMAGE`)")
        if self.mask_layer is None:
            data, kwargs, _ = mask_layer(frame)
            self.mask_layer = self.viewer.add_labels(data, **kwargs)
        if self.prompts_layer is None:
            data, kwargs, _ = prompts_layer(frame)
            self.prompts_layer = self.viewer.add_points(data, **kwargs)
            self._watch(self.prompts_layer)
        if self.landmarks_layer is None:
            data, kwargs, _ = landmarks_layer(frame, [])
            self.landmarks_layer = self.viewer.add_points(data, **kwargs)
            self._watch(self.landmarks_layer)
        self._update_defaults()

    def _watch(self, layer) -> None:
        layer.events.data.connect(self._points_changed)  # napari ignores a second connection of the same slot

    # -- landmarks ---------------------------------------------------------------------------

    def landmark_names(self) -> list[str]:
        layer = self.landmarks_layer
        return [] if layer is None or len(layer.data) == 0 else [str(n) for n in layer.features["name"]]

    def add_landmark(self, name: str, point) -> None:
        """Add a landmark at ``point``, array indices of the image (2D ``(row, col)``; volume ``(i, j, k)``)."""
        self.ensure_layers()
        self._add_point(self.landmarks_layer, self.frame.points_to_display(np.asarray(point, float))[0],
                        {"name": str(name)})

    def rename_landmark(self, index: int, name: str) -> None:
        features = self.landmarks_layer.features.copy()
        features.loc[index, "name"] = str(name)
        self.landmarks_layer.features = features
        self._refresh_landmarks()

    def move_landmark(self, index: int, offset: int) -> None:
        """Move landmark ``index`` by ``offset`` places (the JSON keeps the list's order)."""
        n = len(self.landmarks_layer.data)
        to = index + offset
        if not (0 <= index < n and 0 <= to < n):
            return
        order = list(range(n))
        order[index], order[to] = order[to], order[index]
        layer = self.landmarks_layer
        data, features = layer.data[order], layer.features.iloc[order].reset_index(drop=True)
        layer.data = data
        layer.features = features
        self._refresh_landmarks()
        self.landmark_list.setCurrentRow(to)

    def remove_landmark(self, index: int) -> None:
        self.landmarks_layer.selected_data = {index}
        self.landmarks_layer.remove_selected()
        self._refresh_landmarks()

    def _move_selected(self, offset: int) -> None:
        if self.landmark_list.currentRow() >= 0:
            self.move_landmark(self.landmark_list.currentRow(), offset)

    def _delete_selected(self) -> None:
        if self.landmark_list.currentRow() >= 0:
            self.remove_landmark(self.landmark_list.currentRow())

    def _item_renamed(self, item: QListWidgetItem) -> None:
        index = self.landmark_list.row(item)
        if 0 <= index < len(self.landmark_names()) and item.text() != self.landmark_names()[index]:
            self.rename_landmark(index, item.text().strip())

    def _refresh_landmarks(self) -> None:
        self.landmark_list.blockSignals(True)
        self.landmark_list.clear()
        for name in self.landmark_names():
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemIsEditable)
            self.landmark_list.addItem(item)
        self.landmark_list.blockSignals(False)

    # -- prompts and labels ------------------------------------------------------------------

    def add_prompt(self, label: int, point, positive: bool = True) -> None:
        """Add a prompt point of ``label`` at ``point``, array indices of the image (as :meth:`add_landmark`)."""
        self.ensure_layers()
        self._add_point(self.prompts_layer, self.frame.points_to_display(np.asarray(point, float))[0],
                        {"label": int(label), "positive": bool(positive)},
                        POSITIVE_COLOR if positive else NEGATIVE_COLOR)

    def label_names(self) -> dict[int, str]:
        return self.label_table.names()

    def set_label_name(self, label: int, name: str) -> None:
        self.label_table.set_name(label, name)

    def _label_row_chosen(self, row: int) -> None:
        label = self.label_table.label_at(row)
        if label is None:
            return
        self.prompt_label.setValue(label)
        if self.mask_layer is not None:
            self.mask_layer.selected_label = label

    def _paint(self) -> None:
        self.ensure_layers()
        self.viewer.layers.selection.active = self.mask_layer
        self.mask_layer.mode = "paint"

    # -- points in general -------------------------------------------------------------------

    def _add_point(self, layer, display_point: np.ndarray, features: dict, color: str | None = None) -> None:
        layer.feature_defaults = {**dict(layer.feature_defaults.iloc[0]), **features}
        if color is not None:
            layer.current_face_color = color
        layer.add(np.asarray(display_point, float)[None])
        self._update_defaults()

    def _place(self, layer) -> None:
        self.ensure_layers()
        layer = layer or self.landmarks_layer
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def _points_changed(self, event=None) -> None:
        # napari announces a change before making it ("adding") and after ("added"); the defaults
        # must not move on before the new point has taken them.
        if str(getattr(getattr(event, "action", None), "value", "")).endswith("ing"):
            return
        if event is not None and getattr(event, "source", None) is self.landmarks_layer:
            self._unique_names()
        self._refresh_landmarks()
        self._update_defaults()

    def _unique_names(self) -> None:
        """Rename a new point whose name is empty or taken (napari gives a new point the selected point's name)."""
        names = self.landmark_names()
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not name.strip() or name in seen:
                names[i] = _next_name(seen | set(names))
            seen.add(names[i])
        if names != self.landmark_names():
            features = self.landmarks_layer.features.copy()
            features["name"] = names
            self.landmarks_layer.features = features

    def _update_defaults(self) -> None:
        """What a point placed with napari's add tool gets: the typed name (else ``L<n>``), the chosen label."""
        if self.landmarks_layer is not None:
            names = set(self.landmark_names())
            typed = self.name_edit.text().strip()
            name = typed if typed and typed not in names else _next_name(names)
            self.landmarks_layer.feature_defaults = {"name": name}
        if self.prompts_layer is not None:
            positive = self.positive_radio.isChecked()
            self.prompts_layer.feature_defaults = {"label": self.prompt_label.value(), "positive": positive}
            self.prompts_layer.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR

    # -- saving ------------------------------------------------------------------------------

    def save_template(self, path: str | Path) -> Path:
        """Write the mask beside ``path`` and the template JSON to ``path``; returns ``path``.

        Raises
        ------
        MedshotError
            Nothing to save, unnamed or repeated landmarks, or a template that does not validate.
        """
        if self.frame is None:
            raise MedshotError("open an image with medshot's reader first")
        landmarks = prompts = mask = None
        if self.landmarks_layer is not None and len(self.landmarks_layer.data):
            landmarks = (self.landmark_names(), data_in_frame(self.landmarks_layer, self.image_layer))
        if self.prompts_layer is not None and len(self.prompts_layer.data):
            f = self.prompts_layer.features
            prompts = (list(f["label"]), list(f["positive"]), data_in_frame(self.prompts_layer, self.image_layer))
        if self.mask_layer is not None and np.any(self.mask_layer.data):
            mask = self.frame.from_display(np.asarray(self.mask_layer.data))
        out = save_template(Path(path), self.frame, landmarks, prompts, mask, self.label_names())
        self.path_edit.setText(str(out))
        self.template_saved.emit(str(out))
        return out

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save template", self.path_edit.text() or "template.json",
                                              "Template (*.json)")
        if path:
            self.path_edit.setText(path)

    def _save_clicked(self) -> None:
        if not self.path_edit.text().strip():
            self._browse()
        try:
            out = self.save_template(self.path_edit.text().strip())
        except MedshotError as exc:
            self.status.setText(f"not saved: {exc}")
            return
        self.status.setText(f"saved {out}")


def _next_name(taken: set[str]) -> str:
    n = len(taken) + 1
    while f"L{n}" in taken:
        n += 1
    return f"L{n}"
