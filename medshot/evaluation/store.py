"""cases.csv: one block of rows per finished case, appended as it finishes, read back to resume.

A case that raised an error is a block too: its rows have ``status = failed``, the one-line
``reason``, and failure scores (:func:`medshot.evaluation.scoring.failure_rows`), so it counts in
every mean; a rerun tries it again (:func:`without_failed`).

The header depends on the data kind only through the landmark coordinate columns: images have
``pred_x, pred_y, true_x, true_y`` (x = column, y = row, pixels); volumes ``pred_i, pred_j,
pred_k, true_i, true_j, true_k`` (source voxel indices).
"""

from __future__ import annotations

import csv
import io as _io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..data.write import atomic_path, write_csv

_HEAD = ("template", "target", "method", "kind", "item", "item_name", "in_truth", "dice", "hd95_px", "hd95_mm",
         "ned", "distance_px", "distance_mm")
_TAIL = ("score", "seconds", "peak_mem_mb", "status", "reason")
FAILED = "failed"


def cases_header(point_columns: Sequence[str] = ("x", "y")) -> tuple[str, ...]:
    """The cases.csv header for landmark coordinate columns named by ``point_columns`` (``("x", "y")`` in 2D)."""
    return (*_HEAD, *(f"pred_{c}" for c in point_columns), *(f"true_{c}" for c in point_columns), *_TAIL)


CASES_HEADER = cases_header(("x", "y"))
CASES_HEADER_3D = cases_header(("i", "j", "k"))


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "inf" if np.isinf(value) else ("" if np.isnan(value) else f"{float(value):.6g}")
    return str(value)


def case_lines(template: str, target: str, method: str, rows: Sequence[dict], seconds: float,
               peak_mb: float, header: Sequence[str] = CASES_HEADER) -> str:
    """The CSV text of one finished case (all its rows, newline-terminated)."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        full = {"status": "ok", **row, "template": template, "target": target, "method": method,
                "seconds": f"{seconds:.4g}", "peak_mem_mb": f"{peak_mb:.4g}"}
        writer.writerow([_format(full.get(k)) for k in header])
    return buf.getvalue()


def append_case(path: Path, text: str) -> None:
    """Append one case's rows with a single unbuffered write, then flush them to disk.

    A kill leaves either the whole case or none of it (a crash of the machine may cut the last
    line; :func:`read_cases` then drops that case).
    """
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_cases(path: Path, header: Sequence[str] = CASES_HEADER) -> list[dict]:
    """Rows of a cases.csv with this ``header``; repairs it in place when its last case was cut off.

    Raises
    ------
    MedshotError
        When the file's header differs (another medshot version, or the other kind of data).
    """
    if not path.exists():
        return []
    text = path.read_text()
    if not text:
        return []
    found = text.split("\n", 1)[0].split(",")
    if tuple(found) != tuple(header):
        raise MedshotError("exists but is not a cases.csv of this medshot version and kind of data (its header "
                           "differs); use another --out or --restart", path)
    cut = not text.endswith("\n")
    if cut:
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(_io.StringIO(text)))
    if cut and rows:
        last = case_key(rows[-1])
        rows = [r for r in rows if case_key(r) != last]
    if cut:
        write_cases(path, rows, header)
    return rows


def write_cases(path: Path, rows: Sequence[dict], header: Sequence[str] = CASES_HEADER) -> None:
    """(Re)write a whole cases.csv atomically from rows as read back."""
    with atomic_path(path) as tmp:
        write_csv(tmp, header, ([r.get(k, "") for k in header] for r in rows))


def case_key(row: dict) -> tuple[str, str, str]:
    """(template, target, method) of a row: what identifies a case."""
    return row["template"], row["target"], row["method"]


def failed_cases(rows: Sequence[dict]) -> dict[tuple[str, str, str], str]:
    """(template, target, method) -> reason, of every case whose rows say it failed."""
    return {case_key(r): r.get("reason", "") for r in rows if r.get("status") == FAILED}


def without_failed(rows: Sequence[dict]) -> list[dict]:
    """The rows of the cases that did not fail (a rerun runs the failed ones again)."""
    failed = failed_cases(rows)
    return [r for r in rows if case_key(r) not in failed]
