"""Small Qt widgets the panels share."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QTableWidget, QTableWidgetItem, QWidget


class LabelNameTable(QTableWidget):
    """Two columns, label (fixed) and name (editable): the template's label names."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["label", "name"])
        self.horizontalHeader().setStretchLastSection(True)
        self.verticalHeader().setVisible(False)

    def names(self) -> dict[int, str]:
        """Label -> name; an empty name reads as ``label <n>``, as ``medshot template`` names labels."""
        out = {}
        for r in range(self.rowCount()):
            label, name = self.item(r, 0), self.item(r, 1)
            if label is not None and label.text().strip().isdigit():
                out[int(label.text())] = (name.text().strip() if name is not None else "") or f"label {label.text()}"
        return out

    def set_name(self, label: int, name: str) -> None:
        for r in range(self.rowCount()):
            if self.item(r, 0).text() == str(label):
                self.item(r, 1).setText(name)
                return
        r = self.rowCount()
        self.insertRow(r)
        item = QTableWidgetItem(str(int(label)))
        item.setFlags(item.flags() & ~Qt.ItemIsEditable)
        self.setItem(r, 0, item)
        self.setItem(r, 1, QTableWidgetItem(name or f"label {label}"))

    def next_label(self) -> int:
        return max(self.names(), default=0) + 1

    def label_at(self, row: int) -> int | None:
        item = self.item(row, 0) if row >= 0 else None
        return int(item.text()) if item is not None else None


def with_button(edit: QLineEdit, text: str, slot) -> QWidget:
    """A line edit with a button on its right (a "…" browse button, say)."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    button = QPushButton(text)
    button.clicked.connect(slot)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return box
