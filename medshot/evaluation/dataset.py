"""Finding the cases of an evaluation dataset: a folder layout or a manifest, 2D images or 3D volumes.

Folder layout (``docs/evaluate.md``)::

    DATASET/images/      2D images, or 3D NIfTI volumes / DICOM series folders
    DATASET/masks/       label maps with the images' names or stems (``labels/`` also accepted)
    DATASET/landmarks.csv
    DATASET/label_names.csv   (or one level up)

A volume dataset may instead hold one ``*landmarks*.csv`` or ``*centroids*.csv`` (as
``volumes/label_centroids_voxel.csv`` of the evaldata) with voxel ``i,j,k`` or world
``x_mm,y_mm,z_mm`` columns and an ``id``/``image`` column. Whether a dataset is 2D or 3D is read
from its images (a 3D NIfTI or a DICOM series folder is a volume); a dataset holds one kind. How
each case is read and checked is the kind's runner's job (:mod:`medshot.evaluation.runner`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import MedshotError
from ..data.annotations import read_label_names
from ..data.image import path_stem
from ..data.read import IMAGE_SUFFIXES, is_image_path
from .cases import Dataset, Entry
from .runner import runner_for

MANIFEST_NAMES = ("manifest.csv", "manifest.json")
MASK_FOLDERS = ("masks", "labels")
LANDMARK_WORDS = ("landmark", "centroid")  # volume datasets: the one CSV whose name holds one of these


def discover_dataset(path: str | Path) -> Dataset:
    """Find and check every case of a dataset folder or manifest file.

    Parameters
    ----------
    path : str or Path
        A folder with ``images/`` and ``masks/`` (same file names) and/or ``landmarks.csv``
        (``image,landmark_id,x,y`` or ``image,name,x,y`` for images; see the module docstring for
        volumes); a folder holding ``manifest.csv`` or ``manifest.json``; or such a manifest file.

    Returns
    -------
    Dataset
        Its ``kind`` is ``"2d"`` or ``"3d"``.

    Raises
    ------
    MedshotError
        On a missing folder, no images, a mask missing or of another size than its image, 2D and 3D
        cases mixed, unreadable landmarks, or fewer than two cases.
    """
    path = Path(path)
    if not path.exists():
        raise MedshotError("dataset not found (expected a folder with images/, or a manifest .csv/.json)", path)
    if path.is_file():
        return read_manifest(path)
    images_dir = path / "images"
    if not images_dir.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return read_manifest(path / name)
        raise MedshotError("no images/ folder and no manifest.csv or manifest.json", path)
    masks_dir = next((path / m for m in MASK_FOLDERS if (path / m).is_dir()), None)
    images = _list_images(images_dir)
    kind = _kind_of(images, path)
    landmarks_csv = _landmarks_file(path, kind)
    if masks_dir is None and landmarks_csv is None:
        raise MedshotError("no ground truth: expected masks/ and/or landmarks.csv beside images/", path)
    entries = [Entry(image, _find_mask(masks_dir, image) if masks_dir else None, landmarks_csv) for image in images]
    return _build_dataset(path, entries, _label_names_near(path), kind)


def _list_images(folder: Path) -> list[Path]:
    from ..data.dicom import is_dicom_series_dir

    found = sorted(q for q in folder.iterdir()
                   if is_image_path(q) or (q.is_dir() and not q.name.startswith(".") and is_dicom_series_dir(q)))
    if not found:
        raise MedshotError(f"folder holds no image ({', '.join(IMAGE_SUFFIXES)}) or DICOM series folder", folder)
    return found


def _kind_of(images: Sequence[Path], where: Path) -> str:
    """``"3d"`` when the images are volumes, ``"2d"`` when they are images; an error when both."""
    from ..data.read import is_volume_path

    volume = [is_volume_path(p) for p in images]
    if any(volume) and not all(volume):
        v, i = volume.index(True), volume.index(False)
        raise MedshotError(f"mixes 3D volumes ('{images[v].name}') and 2D images ('{images[i].name}'); "
                           "evaluate one kind of data at a time", where)
    return "3d" if volume and volume[0] else "2d"


def _landmarks_file(folder: Path, kind: str) -> Path | None:
    if (folder / "landmarks.csv").is_file():
        return folder / "landmarks.csv"
    if kind != "3d":
        return None
    found = sorted(p for p in folder.glob("*.csv") if any(w in p.name.lower() for w in LANDMARK_WORDS))
    if len(found) > 1:
        raise MedshotError(f"several landmark CSVs ({', '.join(p.name for p in found)}); name the one to use "
                           "landmarks.csv or list the cases in a manifest", folder)
    return found[0] if found else None


def _find_mask(masks_dir: Path, image: Path) -> Path:
    same = masks_dir / image.name
    if same.is_file():
        return same
    stem = path_stem(image)
    for suffix in IMAGE_SUFFIXES:
        if (masks_dir / (stem + suffix)).is_file():
            return masks_dir / (stem + suffix)
    raise MedshotError(f"no mask for image '{image.name}' (expected {same})", masks_dir)


def _label_names_near(folder: Path) -> dict[int, str]:
    for candidate in (folder / "label_names.csv", folder.parent / "label_names.csv"):
        if candidate.is_file():
            return {k: v for k, v in read_label_names(candidate).items() if k != 0}
    return {}


def read_manifest(path: str | Path) -> Dataset:
    """Read a manifest listing the cases explicitly (paths relative to the manifest).

    CSV: columns ``image`` (required), ``mask``, ``landmarks`` (a CSV with ``name,x,y`` -- for
    volumes ``name,i,j,k`` or ``name,x_mm,y_mm,z_mm`` -- or one with an ``image`` column shared by
    several cases), ``name``, and the spacing in mm: ``spacing_y, spacing_x`` for images,
    ``spacing_i, spacing_j, spacing_k`` for volumes (default: from the file header).
    JSON: ``{"cases": [{"image": ..., "mask": ..., "landmarks": "file.csv" or
    [{"name": ..., "x": ..., "y": ...}] (volumes: ``i, j, k`` or ``x_mm, y_mm, z_mm``), "name": ...,
    "spacing": [sy, sx] or [si, sj, sk]}], "label_names": {"1": ...}}`` or just the list of cases.
    """
    path = Path(path)
    if not path.is_file():
        raise MedshotError("manifest not found", path)
    base = path.parent
    names = _label_names_near(base)
    if path.suffix.lower() == ".json":
        try:
            spec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MedshotError(f"not valid JSON ({exc})", path) from exc
        items = spec.get("cases") if isinstance(spec, dict) else spec
        if not isinstance(items, list):
            raise MedshotError("manifest JSON needs a list of cases (or {\"cases\": [...]})", path)
        if isinstance(spec, dict) and spec.get("label_names"):
            try:
                names = {int(k): str(v) for k, v in spec["label_names"].items() if int(k) != 0}
            except (AttributeError, ValueError) as exc:
                raise MedshotError("'label_names' must map integer labels to names", path) from exc
        entries = [_json_entry(item, base, path, i) for i, item in enumerate(items)]
    elif path.suffix.lower() == ".csv":
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MedshotError(f"cannot read CSV ({exc})", path) from exc
        if not rows or "image" not in rows[0]:
            raise MedshotError("manifest CSV needs an 'image' column and at least one row", path)
        entries = [_csv_entry(r, base, path, i) for i, r in enumerate(rows, start=2)]
    else:
        raise MedshotError("manifest must be a .csv or .json file", path)
    return _build_dataset(base, entries, names, _kind_of([e.image for e in entries], path))


def _json_entry(item, base: Path, where: Path, i: int) -> Entry:
    if not isinstance(item, dict) or not item.get("image"):
        raise MedshotError(f"case {i + 1}: needs an 'image' entry", where)
    try:
        landmarks = item.get("landmarks")
        if isinstance(landmarks, list):
            if not all(isinstance(d, dict) and "name" in d for d in landmarks):
                raise ValueError("each landmark needs a 'name'")
        elif landmarks:
            landmarks = base / str(landmarks)
        spacing = tuple(float(v) for v in item["spacing"]) if item.get("spacing") else None
        if spacing is not None and len(spacing) not in (2, 3):
            raise ValueError("spacing needs [sy, sx] (images) or [si, sj, sk] (volumes)")
    except (KeyError, TypeError, ValueError) as exc:
        raise MedshotError(f"case {i + 1}: malformed entry ({type(exc).__name__}: {exc})", where) from exc
    return Entry(base / str(item["image"]), base / str(item["mask"]) if item.get("mask") else None,
                 landmarks or None, item.get("name"), spacing, where)


def _csv_entry(row: dict, base: Path, where: Path, line: int) -> Entry:
    def cell(key: str) -> str:
        return (row.get(key) or "").strip()

    if not cell("image"):
        raise MedshotError(f"line {line}: empty 'image'", where)
    spacing = None
    for keys in (("spacing_y", "spacing_x"), ("spacing_i", "spacing_j", "spacing_k")):
        if any(cell(k) for k in keys):
            try:
                spacing = tuple(float(cell(k)) for k in keys)
            except ValueError as exc:
                raise MedshotError(f"line {line}: {' and '.join(keys)} must all be numbers (mm)", where) from exc
    return Entry(base / cell("image"), base / cell("mask") if cell("mask") else None,
                 base / cell("landmarks") if cell("landmarks") else None, cell("name") or None, spacing, where)


def _build_dataset(root: Path, entries: Sequence[Entry], label_names: dict[int, str], kind: str) -> Dataset:
    runner = runner_for(kind)
    cases = [runner.read_case(e) for e in entries]
    cases.sort(key=lambda c: c.name)
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MedshotError(f"several cases share the name(s) {', '.join(dup)}", root)
    if len(cases) < 2:
        raise MedshotError(f"needs at least two cases (a template and a target), found {len(cases)}", root)
    for what, has in (("a mask", lambda c: c.mask is not None), ("landmarks", lambda c: bool(c.landmarks))):
        with_it = [c.name for c in cases if has(c)]
        if with_it and len(with_it) != len(cases):
            missing = next(c for c in cases if not has(c))
            raise MedshotError(f"case '{missing.name}' has no {what} but {len(with_it)} others do; "
                               "every case needs the same kind of ground truth", missing.image)
    return Dataset(root, cases, dict(label_names), kind)
