"""``medshot evaluate``: every template x target x method of a labelled dataset, resumable.

A dataset is a folder (``images/`` plus ``masks/`` and/or ``landmarks.csv``) or a manifest file
listing the cases (see ``docs/evaluate.md``). Each selected template is run against every other
case with each medshot backbone x segmenter combination whose weights are present and with the
SimpleITK atlas-registration baselines, on the same pairs. One row per template x target x method
x label (or landmark) is appended to ``cases.csv`` as soon as a case finishes; a rerun skips the
cases already there. ``summary.csv``, the plots and ``report.html`` are then made from
``cases.csv`` alone (:mod:`medshot.report`), so a resumed run reports exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import re
import shutil
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.errors import MedshotError
from .evaluate import dice, hd95, normalized_distance
from .io import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    atomic_path,
    list_images,
    load_image,
    load_label_map,
    path_stem,
    save_png,
    write_csv,
    write_text_atomic,
)
from .template import Landmark, Template, read_landmarks_csv

MANIFEST_NAMES = ("manifest.csv", "manifest.json")
CASES_HEADER = (
    "template", "target", "method", "kind", "item", "item_name", "in_truth", "dice", "hd95_px", "hd95_mm",
    "ned", "distance_px", "distance_mm", "pred_x", "pred_y", "true_x", "true_y", "score", "seconds", "peak_mem_mb",
)
# Settings that change a case's numbers: a rerun into the same folder must use the same ones.
RESULT_SETTINGS = ("data", "work_size", "window", "split")
TEMPLATE_CHOICES = ("spread", "first")
SPLITS = ("all", "tune", "report")


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One annotated image of a dataset.

    Attributes
    ----------
    name : str
        Unique case id (the image file name without its suffix, unless a manifest names it).
    image : Path
    mask : Path or None
        Label map with the image's size (0 = background).
    landmarks : list of Landmark
        Ground-truth points (image pixels, x = column).
    spacing_yx : (float, float) or None
        Pixel size in mm, when known (NIfTI/DICOM header or manifest); HD95 and distances are
        then also reported in mm.
    shape : (int, int)
        ``(H, W)`` of the image.
    labels : tuple of int
        Labels present in the mask.
    """

    name: str
    image: Path
    mask: Path | None = None
    landmarks: list[Landmark] = field(default_factory=list)
    spacing_yx: tuple[float, float] | None = None
    shape: tuple[int, int] = (0, 0)
    labels: tuple[int, ...] = ()


@dataclass
class Dataset:
    """The cases of one task, sorted by name, and the names of its labels."""

    root: Path
    cases: list[Case]
    label_names: dict[int, str] = field(default_factory=dict)

    @property
    def has_masks(self) -> bool:
        return any(c.mask is not None for c in self.cases)

    @property
    def has_landmarks(self) -> bool:
        return any(c.landmarks for c in self.cases)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cases]

    def case(self, name: str) -> Case:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {c.name: c for c in self.cases}


@dataclass
class _Entry:
    """A case as listed, before its files are read and checked."""

    image: Path
    mask: Path | None = None
    landmarks: Path | list[Landmark] | None = None
    name: str | None = None
    spacing_yx: tuple[float, float] | None = None


def discover_dataset(path: str | Path) -> Dataset:
    """Find and check every case of a dataset folder or manifest file.

    Parameters
    ----------
    path : str or Path
        A folder with ``images/`` and ``masks/`` (same file names) and/or ``landmarks.csv``
        (``image,landmark_id,x,y`` or ``image,name,x,y``); a folder holding ``manifest.csv`` or
        ``manifest.json``; or such a manifest file itself.

    Returns
    -------
    Dataset

    Raises
    ------
    MedshotError
        On a missing folder, no images, a mask missing or of another size than its image, a 3D
        volume, unreadable landmarks, or fewer than two cases.
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
    masks_dir = path / "masks"
    landmarks_csv = path / "landmarks.csv"
    has_masks, has_landmarks = masks_dir.is_dir(), landmarks_csv.is_file()
    if not has_masks and not has_landmarks:
        raise MedshotError("no ground truth: expected masks/ and/or landmarks.csv beside images/", path)
    entries = [
        _Entry(image, _find_mask(masks_dir, image) if has_masks else None, landmarks_csv if has_landmarks else None)
        for image in list_images([images_dir])
    ]
    return _build_dataset(path, entries, _label_names_near(path))


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
    from .cli import _read_label_names

    for candidate in (folder / "label_names.csv", folder.parent / "label_names.csv"):
        if candidate.is_file():
            return {k: v for k, v in _read_label_names(str(candidate)).items() if k != 0}
    return {}


def read_manifest(path: str | Path) -> Dataset:
    """Read a manifest listing the cases explicitly (paths relative to the manifest).

    CSV: columns ``image`` (required), ``mask``, ``landmarks`` (a CSV with ``name,x,y``, or one
    with an ``image`` column shared by several cases), ``name``, ``spacing_y``, ``spacing_x`` (mm).
    JSON: ``{"cases": [{"image": ..., "mask": ..., "landmarks": "file.csv" or
    [{"name": ..., "x": ..., "y": ...}], "name": ..., "spacing": [sy, sx]}], "label_names": {"1": ...}}``
    or just the list of cases.
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
    return _build_dataset(base, entries, names)


def _json_entry(item, base: Path, where: Path, i: int) -> _Entry:
    if not isinstance(item, dict) or not item.get("image"):
        raise MedshotError(f"case {i + 1}: needs an 'image' entry", where)
    try:
        landmarks = item.get("landmarks")
        if isinstance(landmarks, list):
            landmarks = [Landmark(str(d["name"]), float(d["x"]), float(d["y"])) for d in landmarks]
        elif landmarks:
            landmarks = base / str(landmarks)
        spacing = tuple(float(v) for v in item["spacing"]) if item.get("spacing") else None
        if spacing is not None and len(spacing) != 2:
            raise ValueError("spacing needs two values [sy, sx]")
    except (KeyError, TypeError, ValueError) as exc:
        raise MedshotError(f"case {i + 1}: malformed entry ({type(exc).__name__}: {exc})", where) from exc
    return _Entry(base / str(item["image"]), base / str(item["mask"]) if item.get("mask") else None,
                  landmarks or None, item.get("name"), spacing)  # type: ignore[arg-type]


def _csv_entry(row: dict, base: Path, where: Path, line: int) -> _Entry:
    def cell(key: str) -> str:
        return (row.get(key) or "").strip()

    if not cell("image"):
        raise MedshotError(f"line {line}: empty 'image'", where)
    spacing = None
    if cell("spacing_y") or cell("spacing_x"):
        try:
            spacing = (float(cell("spacing_y")), float(cell("spacing_x")))
        except ValueError as exc:
            raise MedshotError(f"line {line}: spacing_y and spacing_x must both be numbers (mm)", where) from exc
    return _Entry(base / cell("image"), base / cell("mask") if cell("mask") else None,
                  base / cell("landmarks") if cell("landmarks") else None, cell("name") or None, spacing)


def _build_dataset(root: Path, entries: Sequence[_Entry], label_names: dict[int, str]) -> Dataset:
    cases = [_read_case(e) for e in entries]
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
    return Dataset(root, cases, dict(label_names))


def _read_case(entry: _Entry) -> Case:
    _refuse_3d(entry.image)
    image = load_image(entry.image)
    spacing = entry.spacing_yx or _spacing_of(image)
    labels: tuple[int, ...] = ()
    if entry.mask is not None:
        _refuse_3d(entry.mask)
        mask = load_label_map(entry.mask, image.shape, image)
        labels = tuple(int(v) for v in np.unique(mask) if v != 0)
    landmarks = entry.landmarks
    if isinstance(landmarks, Path):
        landmarks = read_landmarks_csv(landmarks, image_name=entry.image.name)
    return Case(entry.name or path_stem(entry.image), entry.image, entry.mask, list(landmarks or []), spacing,
                image.shape, labels)


def _refuse_3d(path: Path) -> None:
    if not any(path.name.lower().endswith(s) for s in NIFTI_SUFFIXES) or not path.is_file():
        return
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:  # noqa: BLE001 - nibabel fails in many ways; name the file instead
        raise MedshotError(f"cannot read NIfTI header ({type(exc).__name__}: {exc})", path) from exc
    if sum(s > 1 for s in shape) > 2:
        raise MedshotError(f"3D volume {tuple(shape)}: `medshot evaluate` handles 2D images only for now "
                           "(extract 2D slices, or wait for 3D support)", path)


def _spacing_of(image) -> tuple[float, float] | None:
    if image.kind == "dicom" and "spacing_yx" in image.meta:
        return tuple(image.meta["spacing_yx"])  # type: ignore[return-value]
    if image.kind == "nifti" and image.affine is not None:
        zooms = np.sqrt(np.sum(np.square(image.affine[:3, :2]), axis=0))  # array axes 0 (rows), 1 (columns)
        return float(zooms[0]), float(zooms[1])
    return None


# ------------------------------------------------------------------------------------------------
# What to run
# ------------------------------------------------------------------------------------------------


def split_cases(names: Sequence[str], split: str = "all") -> list[str]:
    """The cases of one half of a dataset, so that parameters chosen on one half are reported on the other.

    Cases are sorted by name (one case per subject in every task of the development split) and
    dealt alternately: positions 0, 2, 4, ... form the ``tune`` half, 1, 3, 5, ... the ``report``
    half; ``all`` keeps every case.
    """
    names = sorted(names)
    if split not in SPLITS:
        raise MedshotError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if split == "all":
        return names
    return names[0::2] if split == "tune" else names[1::2]


def select_templates(names: Sequence[str], spec: str = "first", choice: str = "spread") -> list[str]:
    """Which cases serve as templates.

    Parameters
    ----------
    names : sequence of str
        Case names in sorted order.
    spec : str
        ``"first"`` (the first case), ``"all"`` (each case in turn: leave-one-out) or an integer
        ``K`` (K cases; all of them when K >= the number of cases).
    choice : {"spread", "first"}
        How ``K`` cases are picked: ``spread`` takes indices ``floor(i (n-1)/(K-1) + 1/2)`` for
        ``i = 0..K-1`` (evenly over the sorted list, first and last included; ``K = 1`` gives the
        first); ``first`` takes the first ``K``.
    """
    names = list(names)
    n = len(names)
    spec = str(spec).strip().lower()
    if spec == "first":
        return names[:1]
    if spec == "all":
        return names
    try:
        k = int(spec)
    except ValueError:
        raise MedshotError(f"--templates must be 'first', 'all' or a number, got '{spec}'") from None
    if k < 1:
        raise MedshotError(f"--templates K must be at least 1, got {k}")
    if choice not in TEMPLATE_CHOICES:
        raise MedshotError(f"--template-choice must be one of {', '.join(TEMPLATE_CHOICES)}, got '{choice}'")
    if k >= n:
        return names
    if choice == "first" or k == 1:
        return names[:k]
    return [names[int(np.floor(i * (n - 1) / (k - 1) + 0.5))] for i in range(k)]


@dataclass
class Method:
    """One row group of the tables: a medshot backbone/segmenter pair or a baseline."""

    name: str
    backbone: str = "classical"
    segmenter: str = "classical"
    baseline: str | None = None


@dataclass
class Skipped:
    """A requested backbone or segmenter that cannot run here, and why."""

    name: str
    what: str  # "backbone", "segmenter" or "baseline"
    reason: str


def parse_list(text: str | Sequence[str] | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``"none"`` or empty -> ``[]``."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [s.strip() for s in items if s and s.strip()]
    return [] if [s.lower() for s in out] == ["none"] else list(dict.fromkeys(out))


def resolve_methods(backbones: Sequence[str], segmenters: Sequence[str], baselines: Sequence[str],
                    has_masks: bool) -> tuple[list[Method], list[Skipped]]:
    """The runnable methods, and the requested backbones/segmenters that are skipped with the reason.

    ``"all"`` in ``backbones`` or ``segmenters`` asks for every registered one. Without masks the
    segmenter plays no part and medshot methods are named by backbone only.
    """
    from .baselines import BASELINES, baseline_status
    from .features import backbone_entries
    from .segment import segmenter_names, segmenter_status

    entries = {e.name: e for e in backbone_entries()}
    skipped: list[Skipped] = []
    if [b.lower() for b in backbones] == ["all"]:
        backbones = list(entries)
    ready_backbones = []
    for name in backbones:
        if name not in entries:
            skipped.append(Skipped(name, "backbone", f"unknown backbone here (registered: {', '.join(entries)})"))
            continue
        ok, why = entries[name].available()
        if ok:
            ready_backbones.append(name)
        else:
            skipped.append(Skipped(name, "backbone", why))
    ready_segmenters = ["classical"]
    if has_masks:
        known = segmenter_names()
        if [s.lower() for s in segmenters] == ["all"]:
            segmenters = known
        ready_segmenters = []
        for name in segmenters:
            if name not in known:
                skipped.append(Skipped(name, "segmenter", f"unknown segmenter here (registered: {', '.join(known)})"))
                continue
            ok, why = segmenter_status(name)
            if ok:
                ready_segmenters.append(name)
            else:
                skipped.append(Skipped(name, "segmenter", why))
    methods = [Method(f"medshot:{b}/{s}" if has_masks else f"medshot:{b}", b, s)
               for b in ready_backbones for s in ready_segmenters]
    for name in baselines:
        if name not in BASELINES:
            raise MedshotError(f"unknown baseline '{name}'; known: {', '.join(BASELINES)} (or 'none')")
        ok, why = baseline_status(name)
        if ok:
            methods.append(Method(name, baseline=name))
        else:
            skipped.append(Skipped(name, "baseline", why))
    return methods, skipped


def plan_cases(dataset: Dataset, templates: Sequence[str], methods: Sequence[Method],
               max_targets: int | None = None, split: str = "all") -> list[tuple[str, str, Method]]:
    """Every (template, target, method) to run, in the order they run (template, method, target).

    Targets are the other cases of the same ``split`` half as the templates.
    """
    plan = []
    pool = split_cases(dataset.names, split)
    for t in templates:
        targets = [n for n in pool if n != t]
        if max_targets is not None:
            targets = targets[: max(0, int(max_targets))]
        for m in methods:
            plan.extend((t, target, m) for target in targets)
    return plan


# ------------------------------------------------------------------------------------------------
# One case
# ------------------------------------------------------------------------------------------------


def make_template(case: Case, label_names: dict[int, str]) -> Template:
    """A :class:`Template` from a case's image, mask (prompts sampled from it) and landmarks."""
    if case.mask is not None:
        template = Template.build(case.image, case.mask, label_names=label_names)
    else:
        template = Template(image_path=case.image)
    template.landmarks = list(case.landmarks)
    template.validate()
    return template


def score_case(result, template: Template, target: Case, label_names: dict[int, str]) -> list[dict]:
    """cases.csv rows (without template/target/method/timing) of one prediction against the truth.

    One row per label of the template or the truth (``in_truth`` = 0 marks labels the truth lacks;
    they are kept here and left out of the statistics) and one per landmark the template and the
    truth share by name.
    """
    rows: list[dict] = []
    if result.label_map is not None and target.mask is not None:
        truth = load_label_map(target.mask, target.shape)
        for label in sorted(set(template.labels) | set(target.labels)):
            p, t = result.label_map == label, truth == label
            row = {"kind": "label", "item": label, "in_truth": int(label in target.labels),
                   "item_name": label_names.get(label) or template.labels.get(label, f"label {label}"),
                   "dice": dice(p, t), "hd95_px": hd95(p, t), "score": result.scores.get(label)}
            if target.spacing_yx is not None:
                row["hd95_mm"] = hd95(p, t, target.spacing_yx)
            rows.append(row)
    if target.landmarks and result.landmarks:
        found = {lm.name: (lm.x, lm.y) for lm in result.landmarks}
        found_confidence = {lm.name: lm.confidence for lm in result.landmarks}
        for lm in target.landmarks:
            if lm.name not in found:
                continue
            pred, true = np.array(found[lm.name]), np.array([lm.x, lm.y])
            row = {"kind": "landmark", "item": lm.name, "item_name": lm.name, "in_truth": 1,
                   "ned": float(normalized_distance(pred, true, target.shape)),
                   "distance_px": float(np.linalg.norm(pred - true)),
                   "pred_x": pred[0], "pred_y": pred[1], "true_x": true[0], "true_y": true[1],
                   "score": found_confidence.get(lm.name)}
            if target.spacing_yx is not None:
                row["distance_mm"] = float(np.hypot((pred[0] - true[0]) * target.spacing_yx[1],
                                                    (pred[1] - true[1]) * target.spacing_yx[0]))
            rows.append(row)
    if not rows:
        raise MedshotError("nothing to score: the template and the truth share no label or landmark name")
    return rows


class MemoryProbe:
    """Peak memory of one case, in MB.

    ``rss`` (Linux): the peak resident set size during the case minus the resident size before it,
    read from ``/proc/self/status`` after handing freed heap memory back to the system (glibc
    ``malloc_trim``) and resetting the peak through ``/proc/self/clear_refs``; it counts everything
    the process touches (numpy, torch, SimpleITK). Elsewhere ``tracemalloc``: the peak of
    Python-traced allocations (numpy arrays included, native libraries not).
    """

    def __init__(self) -> None:
        self.kind = "rss" if self._reset_rss() else "tracemalloc"
        self._start = 0.0
        self._trim = _malloc_trim()

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return _proc_status_kb("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        if self.kind == "rss":
            if self._trim is not None:
                self._trim(0)  # freed memory would otherwise stay resident and hide the next case's peak
            self._reset_rss()
            self._start = float(_proc_status_kb("VmRSS") or 0)
        else:
            if not tracemalloc.is_tracing():
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._start = float(tracemalloc.get_traced_memory()[0]) / 1024

    def stop(self) -> float:
        if self.kind == "rss":
            peak = float(_proc_status_kb("VmHWM") or 0)
        else:
            peak = float(tracemalloc.get_traced_memory()[1]) / 1024
        return max(0.0, peak - self._start) / 1024


def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(rf"^{key}:\s+(\d+)", fh.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------------
# cases.csv: appended case by case, read back on resume
# ------------------------------------------------------------------------------------------------


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "inf" if np.isinf(value) else ("" if np.isnan(value) else f"{float(value):.6g}")
    return str(value)


def case_lines(template: str, target: str, method: str, rows: Sequence[dict], seconds: float,
               peak_mb: float) -> str:
    """The CSV text of one finished case (all its rows, newline-terminated)."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        full = {**row, "template": template, "target": target, "method": method,
                "seconds": f"{seconds:.4g}", "peak_mem_mb": f"{peak_mb:.4g}"}
        writer.writerow([_format(full.get(k)) for k in CASES_HEADER])
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


def read_cases(path: Path) -> list[dict]:
    """Rows of a cases.csv; repairs it in place when its last case was cut off."""
    if not path.exists():
        return []
    text = path.read_text()
    if not text:
        return []
    header = text.split("\n", 1)[0].split(",")
    if tuple(header) != CASES_HEADER:
        raise MedshotError("exists but is not a cases.csv of this medshot version (its header differs); "
                           "use another --out or --restart", path)
    cut = not text.endswith("\n")
    if cut:
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(_io.StringIO(text)))
    if cut and rows:
        last = _key(rows[-1])
        rows = [r for r in rows if _key(r) != last]
    if cut:
        write_cases(path, rows)
    return rows


def write_cases(path: Path, rows: Sequence[dict]) -> None:
    """(Re)write a whole cases.csv atomically from rows as read back."""
    with atomic_path(path) as tmp:
        write_csv(tmp, CASES_HEADER, ([r.get(k, "") for k in CASES_HEADER] for r in rows))


def _key(row: dict) -> tuple[str, str, str]:
    return row["template"], row["target"], row["method"]


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


@dataclass
class EvaluationConfig:
    """Everything ``medshot evaluate`` takes (see ``medshot evaluate --help``)."""

    data: Path
    out: Path
    backbones: list[str] = field(default_factory=lambda: ["classical"])
    segmenters: list[str] = field(default_factory=lambda: ["classical"])
    baselines: list[str] = field(default_factory=lambda: ["identity", "affine", "bspline"])
    templates: str = "first"
    template_choice: str = "spread"
    split: str = "all"
    max_targets: int | None = None
    work_size: int = 256
    window: tuple[float, float] | None = None
    restart: bool = False
    progress: bool = True


@dataclass
class EvaluationResult:
    out: Path
    dataset: Dataset
    methods: list[Method]
    skipped: list[Skipped]
    planned: int
    resumed: int
    failed: int
    files: list[Path]


def run_evaluation(config: EvaluationConfig) -> EvaluationResult:
    """Run (or resume) an evaluation and write its report; see the module docstring.

    Every input is checked before anything is written; a problem raises :class:`MedshotError`.
    """
    from .report import ReportContext, write_report

    dataset = discover_dataset(config.data)
    templates = select_templates(split_cases(dataset.names, config.split), config.templates, config.template_choice)
    if dataset.has_masks:
        empty = [t for t in templates if not dataset.case(t).labels]
        if empty:
            raise MedshotError(f"template case(s) {', '.join(empty)} have an empty mask; choose other templates",
                               dataset.case(empty[0]).mask)
    methods, skipped = resolve_methods(config.backbones, config.segmenters, config.baselines, dataset.has_masks)
    if not methods:
        raise MedshotError("nothing to run: no requested backbone/segmenter is available and no baseline is asked "
                           "for" + "".join(f"; {s.name}: {s.reason}" for s in skipped))
    if config.max_targets is not None and config.max_targets < 1:
        raise MedshotError(f"--max-targets must be at least 1, got {config.max_targets}")
    plan = plan_cases(dataset, templates, methods, config.max_targets, config.split)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MedshotError("output path exists and is not a folder", out)
    settings = {"data": str(Path(config.data).resolve()), "work_size": int(config.work_size),
                "window": list(config.window) if config.window else None, "split": config.split}
    cases_path, run_path, predictions = out / "cases.csv", out / "run.json", out / "predictions"
    if config.restart:
        for p in (cases_path, run_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(predictions, ignore_errors=True)
    elif run_path.exists():
        _check_same_settings(run_path, settings)
    rows = read_cases(cases_path)  # checks an earlier cases.csv before anything is written

    out.mkdir(parents=True, exist_ok=True)
    if not run_path.exists():
        from . import __version__

        write_text_atomic(run_path, json.dumps({**settings, "medshot_version": __version__}, indent=1) + "\n")
    if not cases_path.exists() or cases_path.stat().st_size == 0:
        write_cases(cases_path, [])
    done = {_key(r) for r in rows}
    todo = [p for p in plan if (p[0], p[1], p[2].name) not in done]
    _print_skipped(skipped)
    probe = MemoryProbe()
    failed = _run_cases(todo, len(plan), dataset, config, cases_path, predictions, probe)

    planned = {(t, g, m.name) for t, g, m in plan}
    rows = [r for r in read_cases(cases_path) if _key(r) in planned]
    ctx = ReportContext(
        title=f"medshot evaluate: {dataset.root.name}",
        methods=[m.name for m in methods],
        baselines=[m.name for m in methods if m.baseline],
        skipped=[(s.name, s.what, s.reason) for s in skipped],
        images={c.name: c.image for c in dataset.cases},
        masks={c.name: c.mask for c in dataset.cases if c.mask is not None},
        label_names=dataset.label_names,
        predictions_dir=predictions,
        window=config.window,
        memory_probe=probe.kind,
        failures=failed,
        settings={
            "dataset": str(dataset.root), "cases": str(len(dataset.cases)),
            "templates": f"{config.templates} ({config.template_choice}): {', '.join(templates)}",
            "split": config.split,
            "targets per template": str(len(plan) // max(1, len(templates) * len(methods))),
            "work size": str(config.work_size), "window": str(config.window or "robust percentiles"),
        },
    )
    files = write_report(out, rows, ctx)
    return EvaluationResult(out, dataset, methods, skipped, len(plan), len(plan) - len(todo), len(failed), files)


def _run_cases(todo: list[tuple[str, str, Method]], total: int, dataset: Dataset, config: EvaluationConfig,
               cases_path: Path, predictions: Path, probe: MemoryProbe) -> list[tuple[str, str, str, str]]:
    """Run the pending cases, appending each to cases.csv; returns the failures (kept out of it)."""
    from tqdm import tqdm

    from .pipeline import OneShot
    from .report import prediction_path

    failed: list[tuple[str, str, str, str]] = []
    bar = tqdm(total=total, initial=total - len(todo), desc="evaluate", unit="case", file=sys.stderr,
               disable=not config.progress or not todo, dynamic_ncols=True)
    shots: dict[tuple[str, str], OneShot] = {}
    current = None
    template: Template | None = None
    try:
        for t_name, g_name, method in todo:
            if t_name != current:
                shots.clear()
                current = t_name
                template = make_template(dataset.case(t_name), dataset.label_names)
            assert template is not None
            bar.set_postfix_str(f"{method.name} {t_name}->{g_name}", refresh=False)
            target = dataset.case(g_name)
            try:
                key = (method.backbone, method.segmenter)
                if key not in shots:
                    shots[key] = OneShot(template, backbone=method.backbone, segmenter=method.segmenter,
                                         work_size=config.work_size, window=config.window)
                probe.start()
                start = time.perf_counter()
                result = shots[key].run(target.image, landmarks=dataset.has_landmarks, masks=dataset.has_masks,
                                        baseline=method.baseline)
                seconds = time.perf_counter() - start
                peak = probe.stop()
                rows = score_case(result, template, target, dataset.label_names)
            except Exception as exc:  # noqa: BLE001 - one failing case must not sink the run
                message = f"{type(exc).__name__}: {exc}"
                failed.append((t_name, g_name, method.name, message))
                bar.write(f"medshot: case {t_name} -> {g_name} with {method.name} failed: {message}", file=sys.stderr)
                bar.update(1)
                continue
            if result.label_map is not None:
                with atomic_path(prediction_path(predictions, method.name, t_name, g_name)) as tmp:
                    save_png(tmp, np.asarray(result.label_map, np.uint8))
            append_case(cases_path, case_lines(t_name, g_name, method.name, rows, seconds, peak))
            bar.update(1)
    finally:
        bar.close()
    return failed


def _check_same_settings(run_path: Path, settings: dict) -> None:
    try:
        earlier = json.loads(run_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedshotError(f"cannot read the earlier run's settings ({exc}); use --restart", run_path) from exc
    for key in RESULT_SETTINGS:
        if earlier.get(key) != settings[key]:
            raise MedshotError(f"holds a run with {key} = {earlier.get(key)!r}, not {settings[key]!r}; "
                               "pass --restart to start over or choose another --out", run_path)


def _print_skipped(skipped: Sequence[Skipped]) -> None:
    for s in skipped:
        print(f"medshot: skipping {s.what} {s.name}: {s.reason}", file=sys.stderr)


def run_from_args(args) -> int:
    """``medshot evaluate`` (argparse namespace from :func:`medshot.cli.build_parser`)."""
    config = EvaluationConfig(
        data=Path(args.data), out=Path(args.out), backbones=parse_list(args.backbones),
        segmenters=parse_list(args.segmenters), baselines=parse_list(args.baselines), templates=args.templates,
        template_choice=args.template_choice, split=args.split, max_targets=args.max_targets,
        work_size=args.work_size,
        window=tuple(args.window) if args.window else None, restart=args.restart, progress=not args.quiet,
    )
    try:
        result = run_evaluation(config)
    except KeyboardInterrupt:
        print(f"medshot: interrupted; finished cases stay in {config.out / 'cases.csv'}: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    print(f"wrote {result.out / 'report.html'}, summary.csv and cases.csv: {result.planned} cases "
          f"({result.resumed} from an earlier run, {result.failed} failed), "
          f"methods {', '.join(m.name for m in result.methods)}"
          + (f"; skipped {', '.join(s.name for s in result.skipped)}" if result.skipped else ""))
    return 0
