"""Outputs are written atomically and durably: data flushed before the rename, the folder after it.

Also the napari plugin's tables (``review.csv``, corrected landmarks), which go through the same
helpers as the command line (issue 21). None of this needs Qt.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from medshot.data import write
from medshot.data.read import read_image
from medshot.napari.layers import frame_for
from medshot.napari.runner import TargetOutcome, _write_review, save_corrections


@pytest.fixture()
def syncs(monkeypatch):
    """Every ``os.fsync``: ("file" | "folder", its path, whether the final file existed then)."""
    seen: list[tuple[str, str]] = []
    real = os.fsync

    def spy(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


@pytest.fixture()
def renames(monkeypatch):
    """The final paths ``os.replace`` moved a file to."""
    finals: list[Path] = []
    real = os.replace

    def spy(src, dst):
        finals.append(Path(dst).resolve())
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    return finals


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads descriptors' paths from /proc")
@pytest.mark.parametrize("how", ["bytes", "text", "outputs"])
def test_atomic_writes_flush_the_file_then_the_folder(tmp_path, syncs, renames, how):
    final = tmp_path / "out.csv"
    if how == "bytes":
        write.write_bytes_atomic(final, b"a,b\n")
    elif how == "text":
        write.write_text_atomic(final, "a,b\n")
    else:
        with write.OutputSet(tmp_path) as out:
            out.path_for("out.csv").write_text("a,b\n")
            out.path_for("other.csv").write_text("c\n")
    assert final.read_text() == "a,b\n"
    files = [p for kind, p in syncs if kind == "file"]
    folders = [p for kind, p in syncs if kind == "folder"]
    # the temporary file's data, before it is renamed (a .part beside the final name) ...
    assert files and all(Path(p).name.startswith(".out.csv.") or Path(p).name.startswith(".other.csv.")
                         for p in files)
    assert syncs[0][0] == "file"
    # ... then the folder, after the rename, once
    assert folders == [str(tmp_path.resolve())]
    assert syncs[-1][0] == "folder"
    assert final.resolve() in renames


def test_a_folder_that_cannot_be_flushed_is_no_error(tmp_path, monkeypatch):
    # some platforms and file systems refuse fsync on a folder: the write still succeeds
    real = os.fsync

    def refuse_folders(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", refuse_folders)
    assert write.write_bytes_atomic(tmp_path / "x.bin", b"1").read_bytes() == b"1"


def test_napari_review_table_is_written_atomically(tmp_path, renames):
    outcomes = [TargetOutcome(Path("a.png"), "a", score=0.9, status="ok"),
                TargetOutcome(Path("b.png"), "b", score=math.nan, status="failed", reason="unreadable")]
    _write_review(tmp_path, outcomes)
    assert (tmp_path / "review.csv").resolve() in renames
    assert (tmp_path / "review.csv").read_text().splitlines()[1].startswith("b.png,,failed")
    assert not list(tmp_path.glob(".*.part"))


def test_napari_corrections_are_written_atomically(tmp_path, template_files, renames):
    image = read_image(template_files[0])
    frame = frame_for(image)
    labels = np.zeros(image.shape, np.uint8)
    labels[5:15, 5:15] = 1
    written = save_corrections(tmp_path / "out", frame, "t", label_map=labels,
                               landmarks=(["a", "b"], np.array([[3.0, 4.0], [10.0, 12.0]])))
    assert {p.name for p in written} == {"t_corrected_mask.png", "t_corrected.mrk.json",
                                         "t_corrected_landmarks.csv"}
    assert {p.resolve() for p in written} <= set(renames)
    assert (tmp_path / "out" / "t_corrected_landmarks.csv").read_text().startswith("name,x,y\n")
