"""The run panel: run a template on targets in a background worker and review the results, weakest first.

Pick the template JSON, the targets (files or folders), a backbone and a segmenter (only those that
can run here, as ``medshot backbones`` reports them), the task and an output folder, then Run. The
targets run one after another in a napari ``thread_worker`` (:func:`.runner.run_targets`), so the
viewer stays responsive; the progress bar counts finished targets and Cancel stops the run after the
target being processed (the pipeline itself cannot be interrupted half-way). Each finished target
adds its image, label map and landmarks (coloured by confidence, red 0 to green 1) as layers and a
row to the table, which is kept sorted weakest score first; selecting a row shows that target.
"Save corrections" writes the selected target's edited label map and moved landmarks beside the
outputs (:func:`.runner.save_corrections`).

"Batch mode" (on by default, as in ``medshot segment`` / ``localize``; from 4 targets) runs pass 1 as
above, then matches every target again with the confident targets most like it as extra templates
(:class:`medshot.pipeline.batch.Batch`): each target's row, layers and outputs are replaced by its
batch result, the progress bar counts both passes and the status line says what the batch did.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import MedshotError
from .layers import frame_for, frame_of, image_layer, landmarks_layer, mask_layer, role_of
from .runner import (
    TASKS,
    TargetOutcome,
    review_order,
    runnable_backbones,
    runnable_segmenters,
    runs_in_batch_mode,
    save_corrections,
)
from .widgets import with_button


class RunPanel(QWidget):
    """Dock widget that runs a template on targets and lists the results (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    run_finished = Signal()

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.outcomes: list[TargetOutcome] = []
        self.batch_notes: list[str] = []  # the last run's
        self.result_layers: dict[str, list] = {}
        self._cancel = threading.Event()
        self._total = 0
        self._build()
        for layer in self.viewer.layers:  # a template opened with medshot's reader is the one to run
            json_path = (frame_of(layer).info.get("template_json") if frame_of(layer) is not None else None)
            if json_path and role_of(layer) == "image":
                self.set_template(json_path)
                break
        else:
            self._fill_segmenters(volume=False)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.template_edit = QLineEdit()
        self.template_edit.editingFinished.connect(lambda: self.set_template(self.template_edit.text()))
        form.addRow("Template", with_button(self.template_edit, "…", self._browse_template))
        self.target_list = QListWidget()
        self.target_list.setMaximumHeight(90)
        form.addRow("Targets", self.target_list)
        row = QHBoxLayout()
        for text, slot in (("Add files…", self._add_files), ("Add folder…", self._add_folder),
                           ("Clear", self.target_list.clear)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            row.addWidget(button)
        form.addRow("", row)
        self.backbone_combo = QComboBox()
        self.backbone_combo.addItems(runnable_backbones())
        self.segmenter_combo = QComboBox()
        self.task_combo = QComboBox()
        self.task_combo.addItems(list(TASKS))
        self.task_combo.setCurrentText("localize + segment")
        form.addRow("Backbone", self.backbone_combo)
        form.addRow("Segmenter", self.segmenter_combo)
        form.addRow("Task", self.task_combo)
        self.batch_check = QCheckBox("batch mode: confident targets become extra templates (4 targets or more)")
        self.batch_check.setChecked(True)  # as `medshot segment` / `localize` do by default
        form.addRow("", self.batch_check)
        self.out_edit = QLineEdit()
        form.addRow("Output", with_button(self.out_edit, "…", self._browse_out))
        layout.addLayout(form)

        row = QHBoxLayout()
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.run_button.clicked.connect(self._run_clicked)
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["target", "score", "status", "weakest"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.itemSelectionChanged.connect(self._row_chosen)
        layout.addWidget(self.table, 1)
        save = QPushButton("Save corrections of the selected target")
        save.clicked.connect(self._save_clicked)
        layout.addWidget(save)

    # -- settings ----------------------------------------------------------------------------

    def set_template(self, path: str | Path) -> None:
        from ..data.template import is_volume_template

        self.template_edit.setText(str(path))
        self._fill_segmenters(volume=bool(str(path)) and is_volume_template(path))
        if not self.out_edit.text() and str(path):
            self.out_edit.setText(str(Path(path).parent / "medshot-review"))

    def _fill_segmenters(self, volume: bool) -> None:
        current = self.segmenter_combo.currentText()
        self.segmenter_combo.clear()
        self.segmenter_combo.addItems(runnable_segmenters(volume))
        if current:
            self.segmenter_combo.setCurrentText(current)

    def set_targets(self, paths: list[str | Path]) -> None:
        self.target_list.clear()
        self.target_list.addItems([str(p) for p in paths])

    def set_output(self, path: str | Path) -> None:
        self.out_edit.setText(str(path))

    def targets(self) -> list[str]:
        return [self.target_list.item(i).text() for i in range(self.target_list.count())]

    # -- running -----------------------------------------------------------------------------

    def run(self):
        """Start the worker on the current settings; returns it (a napari ``GeneratorWorker``).

        Raises
        ------
        MedshotError
            No template, targets or output folder, or a target list medshot refuses.
        """
        from napari.qt.threading import create_worker

        from ..data.template import is_volume_template
        from .runner import list_targets, run_targets

        if self.worker is not None:
            raise MedshotError("a run is already going; cancel it first")
        template, out = self.template_edit.text().strip(), self.out_edit.text().strip()
        if not template or not self.targets() or not out:
            raise MedshotError("choose a template, at least one target and an output folder")
        targets = list_targets(self.targets(), is_volume_template(template))
        self._cancel.clear()
        self.batch_notes = []
        self._total = len(targets)
        batch_mode = runs_in_batch_mode(self._total, self.batch_check.isChecked())
        self.progress.setRange(0, self._total * (2 if batch_mode else 1))  # batch mode: pass 1, then the rounds
        self.progress.setValue(0)
        worker = create_worker(run_targets, template, targets, out, self.task_combo.currentText(),
                               self.backbone_combo.currentText(), self.segmenter_combo.currentText(),
                               cancelled=self._cancel.is_set, batch_mode=self.batch_check.isChecked(),
                               _start_thread=False)
        worker.yielded.connect(self._add_outcome)
        worker.errored.connect(lambda exc: self.status.setText(f"stopped: {exc}"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"running {self._total} target(s)" + (" in batch mode…" if batch_mode else "…"))
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop after the target being processed."""
        if self.worker is not None:
            self._cancel.set()
            self.worker.quit()
            self.status.setText("cancelling after the current target…")

    def _run_clicked(self) -> None:
        try:
            self.run()
        except MedshotError as exc:
            self.status.setText(str(exc))

    def _finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        n, failed = len(self.outcomes), sum(o.status == "failed" for o in self.outcomes)
        word = "cancelled" if self._cancel.is_set() else "done"
        self.status.setText(f"{word}: {n} of {self._total} target(s), {failed} failed; outputs in "
                            f"{self.out_edit.text()}" + (f"\n{self.batch_notes[-1]}" if self.batch_notes else ""))
        if self.outcomes:
            self.select(review_order(self.outcomes)[0].stem)
        self.run_finished.emit()

    def _add_outcome(self, outcome: TargetOutcome | str) -> None:
        if isinstance(outcome, str):  # batch mode's notes
            self.status.setText(outcome)
            self.batch_notes.append(outcome)
            return
        self.outcomes = [o for o in self.outcomes if o.stem != outcome.stem] + [outcome]
        self.progress.setValue(min(self.progress.maximum(), self.progress.value() + 1))
        for layer in self.result_layers.pop(outcome.stem, []):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        if outcome.image is not None:
            if not self.result_layers:  # reviewing now: the template's own layers would only lie underneath
                for layer in self.viewer.layers:
                    if role_of(layer) in ("image", "landmarks", "prompts", "mask"):
                        layer.visible = False
            self.result_layers[outcome.stem] = self._add_layers(outcome)
        self._fill_table()
        self.show_target(outcome.stem)

    def _add_layers(self, outcome: TargetOutcome) -> list:
        frame = frame_for(outcome.image, target=str(outcome.path), out=self.out_edit.text(),
                          label_values=outcome.label_values)
        data, kwargs, _ = image_layer(frame, outcome.stem, role="result-image")
        made = [self.viewer.add_image(data, **kwargs)]
        if outcome.label_map is not None:
            data, kwargs, _ = mask_layer(frame, outcome.label_map, name=f"{outcome.stem} mask", role="result-mask")
            made.append(self.viewer.add_labels(data, **kwargs))
        if outcome.names:
            data, kwargs, _ = landmarks_layer(frame, outcome.names, outcome.points, outcome.confidences,
                                              name=f"{outcome.stem} landmarks", role="result-landmarks")
            made.append(self.viewer.add_points(data, **kwargs))
        return made

    # -- review ------------------------------------------------------------------------------

    def _fill_table(self) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        for o in review_order(self.outcomes):
            r = self.table.rowCount()
            self.table.insertRow(r)
            score = "" if np.isnan(o.score) else f"{o.score:.3f}"
            for c, text in enumerate((o.stem, score, o.status, o.weakest or o.reason)):
                item = QTableWidgetItem(text)
                if c == 3 and o.reason:
                    item.setToolTip(o.reason)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)

    def table_rows(self) -> list[list[str]]:
        return [[self.table.item(r, c).text() for c in range(4)] for r in range(self.table.rowCount())]

    def select(self, stem: str) -> None:
        """Select a target's row (and so show its layers)."""
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == stem:
                self.table.selectRow(r)
                self.show_target(stem)
                return

    def selected_stem(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return self.table.item(rows[0].row(), 0).text() if rows else None

    def _row_chosen(self) -> None:
        stem = self.selected_stem()
        if stem is not None:
            self.show_target(stem)

    def show_target(self, stem: str) -> None:
        """Show one target's layers and hide the other targets'."""
        for other, layers in self.result_layers.items():
            for layer in layers:
                layer.visible = other == stem
        layers = self.result_layers.get(stem)
        if layers:
            self.viewer.reset_view()

    def save_corrections(self, stem: str | None = None) -> list[Path]:
        """Write the edited label map and landmarks of ``stem`` (default: the selected target) beside the outputs."""
        stem = stem or self.selected_stem()
        layers = {role_of(layer): layer for layer in self.result_layers.get(stem or "", [])}
        if not layers:
            raise MedshotError("select a finished target first")
        frame = frame_of(layers["result-image"])
        label_map = landmarks = None
        if "result-mask" in layers:
            label_map = frame.from_display(np.asarray(layers["result-mask"].data))
        if "result-landmarks" in layers:
            points = layers["result-landmarks"]
            landmarks = ([str(n) for n in points.features["name"]], np.asarray(points.data, float))
        return save_corrections(frame.info["out"], frame, stem, label_map, landmarks, frame.info.get("label_values"))

    def _save_clicked(self) -> None:
        try:
            written = self.save_corrections()
        except MedshotError as exc:
            self.status.setText(f"not saved: {exc}")
            return
        self.status.setText("saved " + ", ".join(p.name for p in written))

    # -- dialogs -----------------------------------------------------------------------------

    def _browse_template(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Template", "", "Template (*.json)")
        if path:
            self.set_template(path)

    def _add_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Targets")
        self.target_list.addItems(paths)

    def _add_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of targets (or a DICOM series)")
        if path:
            self.target_list.addItem(path)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)
