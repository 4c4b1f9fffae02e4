"""The output folder of a batch: its lock, its run record, its merged tables, and what is not a target
(:mod:`medshot.data.targets`).

A batch (``medshot localize | segment``, 2D or volumes) writes into ``--out``:

- ``.medshot.lock``: held (``flock``) while a run writes the folder, removed at its end. The
  kernel drops the lock when its process dies, so a lock file left by a killed run is taken over.
- ``medshot-run.json``: the run record. Per command, the settings each target was done with (a
  hash of the template JSON and the files it names, backbone, segmenter and options, medshot's
  version), its status, its output files and the size and time of the target file, so that
  ``--resume`` can skip what is already done and nothing else.
- ``results.csv`` / ``landmarks.csv``: one table per command, merged by target: rows of other
  targets are kept, rows of the targets run again are replaced.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import MedshotError
from ..data.targets import RUN_RECORD
from ..data.write import csv_text, make_output_dir, write_bytes_atomic

LOCK_FILE = ".medshot.lock"
TABLES = ("results.csv", "landmarks.csv")
_PART = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.part$")


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """sha256 of a file, or of the names, sizes and times of a folder's files (a DICOM series)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_stamp(path: Path) -> list[int]:
    """Size and modification time of a target (a folder: of its newest file), to notice a changed target."""
    try:
        if path.is_dir():
            stats = [f.stat() for f in path.iterdir() if f.is_file()]
            return [sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, -1]


# ------------------------------------------------------------------------------------------------
# The folder
# ------------------------------------------------------------------------------------------------


class OutputFolder:
    """``--out`` of one batch, held under its lock from :meth:`open` to :meth:`close`.

    Parameters
    ----------
    path : Path
    command : str
        ``"segment"`` or ``"localize"``: the record keeps each command's targets apart.
    table : str
        The table's file name (``results.csv`` or ``landmarks.csv``).
    header : list of str
        Its columns; the first is ``target``.
    """

    def __init__(self, path: str | Path, command: str, table: str, header: Sequence[str]):
        self.path = Path(path)
        self.command = command
        self.table = table
        self.header = list(header)
        self.rows: dict[str, list[list[str]]] = {}
        self.order: list[str] = []  # table order: earlier targets as they were, then this run's new ones
        self.record: dict = {}
        self._lock_fd: int | None = None

    # -- lock ---------------------------------------------------------------------------------

    def open(self) -> OutputFolder:
        """Create the folder, take its lock, remove stale ``.part`` files, read the record and table."""
        make_output_dir(self.path)
        self._lock()
        try:
            self._remove_stale_parts()
            self._read_record()
            self._read_table()
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        import fcntl

        lock = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise MedshotError(f"cannot write to this output folder ({exc.strerror or exc})", self.path) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise MedshotError(f"another medshot run ({holder}) is writing to this folder; wait for it to "
                                   f"end or choose another --out", self.path) from exc
            # The run that held it may have removed the file between our open and our flock: then this lock
            # is on a deleted file and protects nothing; take the new one instead.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            # Removed while still held, so that no other run can lock this file once it is gone.
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> OutputFolder:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _remove_stale_parts(self) -> None:
        # Under the lock no other batch writes here, so any temporary file is left over from a killed run.
        for p in self.path.iterdir():
            if _PART.match(p.name) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- record and table ---------------------------------------------------------------------

    def _read_record(self) -> None:
        p = self.path / RUN_RECORD
        if not p.exists():
            self.record = {"medshot_run": 1, "commands": {}}
            return
        try:
            self.record = json.loads(p.read_text())
            assert isinstance(self.record.get("commands"), dict)
        except (OSError, ValueError, AssertionError, AttributeError) as exc:
            raise MedshotError("run record is unreadable or damaged; remove it (--resume will then redo every "
                               "target) or choose another --out", p) from exc

    def _read_table(self) -> None:
        p = self.path / self.table
        self.rows = {}
        if not p.exists():
            return
        try:
            with open(p, newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                body = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MedshotError(f"cannot read the existing table ({exc})", p) from exc
        if header != self.header:
            raise MedshotError(f"existing table has other columns ({','.join(header or [])}); it comes from "
                               f"another kind of run; choose another --out", p)
        for row in body:
            if row:
                self.rows.setdefault(row[0], []).append(row)
        self.order = list(self.rows)

    def plan(self, keys: Sequence[str]) -> None:
        """Place this run's targets in the table: new ones after the earlier ones, in the order given.

        Rows then come out in the same order however the targets finish (serial, workers, Dask).
        """
        known = set(self.order)
        self.order += [k for k in keys if k not in known]

    def targets_record(self) -> dict:
        return self.record["commands"].setdefault(self.command, {}).setdefault("targets", {})

    def is_done(self, key: str, path: Path, settings: str) -> bool:
        """Whether ``key`` was finished (ok or low confidence) with these settings and its outputs are here."""
        entry = self.targets_record().get(key)
        return bool(entry and entry.get("settings") == settings and entry.get("status") != "failed"
                    and entry.get("stamp") == target_stamp(path) and key in self.rows
                    and all((self.path / f).is_file() for f in entry.get("files", [])))

    def commit_target(self, key: str, path: Path, files: dict[str, bytes], rows: list[list], status: str,
                      settings: str, settings_doc: dict) -> None:
        """Write one target's files, then the merged table, then the record: each atomically, in this order.

        A run killed in between leaves at worst files the record does not know, which ``--resume`` redoes.
        """
        for name, data in files.items():
            write_bytes_atomic(self.path / name, data)
        self.rows[key] = [[str(v) if not isinstance(v, float) else f"{v:.6g}" for v in row] for row in rows]
        self.write_table()
        self.record["medshot_run"] = 1
        self.record.setdefault("settings", {})[settings] = settings_doc
        self.targets_record()[key] = {"settings": settings, "status": status, "files": sorted(files),
                                      "stamp": target_stamp(path)}
        write_bytes_atomic(self.path / RUN_RECORD, (json.dumps(self.record, indent=1, sort_keys=True) + "\n").encode())

    def write_table(self) -> None:
        body = [row for key in self.order for row in self.rows.get(key, [])]
        write_bytes_atomic(self.path / self.table, csv_text(self.header, body).encode())
