"""The annotated template volume: landmarks and/or a label map on one 3D image.

On disk it is a JSON file with the 2D template's keys plus ``"kind": "volume"`` (paths relative to
the JSON; ``image`` may be a NIfTI file or a DICOM series folder)::

    {"kind": "volume", "image": "case01.nii.gz", "mask": "case01_labels.nii.gz",
     "labels": {"1": "brainstem"}, "window": [-160, 240],
     "landmarks": [{"name": "sella", "i": 61.0, "j": 40.5, "k": 22.0,
                    "x": -3.1, "y": 12.0, "z": 40.2}]}

Landmark ``i, j, k`` are voxel indices of the image's own array (the file's axis order) and
``x, y, z`` world millimetres (NIfTI RAS+). Either set is enough; when both are given the voxel
indices are used.

Landmark CSVs say their coordinate system in the header: ``name,i,j,k`` (voxels) or
``name,x_mm,y_mm,z_mm`` (RAS mm; ``x_lps,y_lps,z_lps`` for DICOM patient coordinates).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..io import check_contrast, write_text_atomic
from ..template import choose_labels
from .io3d import Volume, load_volume, read_label_volume, volume_stem

KIND = "volume"


@dataclass
class Landmark3D:
    """A landmark in source voxel indices of the template image."""

    name: str
    ijk: np.ndarray  # (3,)


@dataclass
class VolumeTemplate:
    """A template volume and its annotations (see the module docstring for the JSON format)."""

    image_path: Path
    mask_path: Path | None = None
    labels: dict[int, str] = field(default_factory=dict)
    landmarks: list[Landmark3D] = field(default_factory=list)
    window: tuple[float, float] | None = None
    _image: Volume | None = field(default=None, repr=False)
    _mask: np.ndarray | None = field(default=None, repr=False)
    _label_values: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def image(self) -> Volume:
        if self._image is None:
            self._image = load_volume(self.image_path)
        return self._image

    @property
    def mask(self) -> np.ndarray | None:
        """Canonical-orientation label map (``uint16``), or None."""
        if self.mask_path is None:
            return None
        if self._mask is None:
            self._mask, self._label_values = read_label_volume(self.mask_path, self.image)
        return self._mask

    @property
    def label_values(self) -> dict[int, int]:
        """Label -> the value the mask file holds for it where they differ (``{1: 255}`` for a 0/255 mask)."""
        _ = self.mask
        return dict(self._label_values)

    @property
    def landmarks_ijk(self) -> np.ndarray:
        """Source voxel indices ``(N, 3)``."""
        return np.array([lm.ijk for lm in self.landmarks], np.float64).reshape(-1, 3)

    @property
    def landmarks_canonical(self) -> np.ndarray:
        return self.image.source_to_canonical(self.landmarks_ijk)

    # -- JSON ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, json_path: str | Path) -> VolumeTemplate:
        """Read and validate a volume template JSON file."""
        json_path = Path(json_path)
        spec = _read_spec(json_path)
        if spec.get("kind") != KIND:
            raise MedshotError("not a volume template (no \"kind\": \"volume\")", json_path)
        base = json_path.parent
        try:
            labels = {int(k): str(v) for k, v in (spec.get("labels") or {}).items()}
            window = tuple(float(v) for v in spec["window"]) if spec.get("window") else None
            raw = list(spec.get("landmarks") or [])
        except (KeyError, TypeError, ValueError) as exc:
            raise MedshotError(f"malformed template entry ({type(exc).__name__}: {exc})", json_path) from exc
        template = cls(image_path=base / spec["image"], mask_path=(base / spec["mask"]) if spec.get("mask") else None,
                       labels=labels, window=window)  # type: ignore[arg-type]
        for d in raw:
            try:
                name = str(d["name"])
                if all(k in d for k in ("i", "j", "k")):
                    ijk = np.array([float(d["i"]), float(d["j"]), float(d["k"])])
                elif all(k in d for k in ("x", "y", "z")):
                    ijk = template.image.world_to_source(np.array([[float(d[k]) for k in "xyz"]]))[0]
                else:
                    raise KeyError("i,j,k or x,y,z")
            except (KeyError, TypeError, ValueError) as exc:
                raise MedshotError(f"landmark entry needs a name and i,j,k or x,y,z ({exc})", json_path) from exc
            template.landmarks.append(Landmark3D(name, ijk))
        template.validate()
        return template

    def validate(self) -> None:
        """Check that the image loads and every annotation fits it; raise a one-line error if not."""
        vol = self.image
        check_contrast(vol.array, self.image_path)
        shape = np.array(vol.source_shape)
        for lm in self.landmarks:
            if np.any(lm.ijk < -0.5) or np.any(lm.ijk > shape - 0.5):
                i, j, k = lm.ijk
                raise MedshotError(f"landmark '{lm.name}' at voxel ({i:g}, {j:g}, {k:g}) lies outside the "
                                   f"{'x'.join(map(str, shape))} volume", self.image_path)
        mask = self.mask
        if mask is not None:
            present = set(np.unique(mask).tolist()) - {0}
            if not present:
                raise MedshotError("mask is empty (no label other than 0)", self.mask_path)
            for label in self.labels:
                if label not in present:
                    raise MedshotError(f"label {label} ('{self.labels[label]}') is absent from the mask",
                                       self.mask_path)
        if not self.landmarks and mask is None:
            raise MedshotError("template has no landmarks or mask: nothing to find", self.image_path)

    def save(self, json_path: str | Path) -> None:
        """Write the JSON (paths relative to it), atomically."""
        json_path = Path(json_path)
        base = json_path.parent.resolve()

        def rel(p: Path) -> str:
            return os.path.relpath(Path(p).resolve(), base)

        spec: dict = {"kind": KIND, "image": rel(self.image_path)}
        if self.mask_path is not None:
            spec["mask"] = rel(self.mask_path)
        if self.window is not None:
            spec["window"] = list(self.window)
        if self.labels:
            spec["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        if self.landmarks:
            world = self.image.source_to_world(self.landmarks_ijk)
            spec["landmarks"] = [
                {"name": lm.name, "i": round(float(lm.ijk[0]), 3), "j": round(float(lm.ijk[1]), 3),
                 "k": round(float(lm.ijk[2]), 3), "x": round(float(w[0]), 3), "y": round(float(w[1]), 3),
                 "z": round(float(w[2]), 3)}
                for lm, w in zip(self.landmarks, world)
            ]
        write_text_atomic(json_path, json.dumps(spec, indent=1) + "\n")

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, image_path: str | Path, mask_path: str | Path | None = None,
              landmarks_csv: str | Path | None = None, labels: list[int] | None = None,
              label_names: dict[int, str] | None = None,
              window: tuple[float, float] | None = None) -> VolumeTemplate:
        """Make a template from a volume, an optional label map and an optional landmark CSV."""
        template = cls(image_path=Path(image_path), mask_path=Path(mask_path) if mask_path else None, window=window)
        vol = template.image
        if landmarks_csv is not None and Path(landmarks_csv).name.lower().endswith((".mrk.json", ".fcsv")):
            from ..markups import markups_landmarks_3d  # 3D Slicer markups (.mrk.json, .fcsv)

            template.landmarks = markups_landmarks_3d(landmarks_csv, vol)
        elif landmarks_csv is not None:
            template.landmarks = read_landmarks_csv_3d(landmarks_csv, vol, image_name=volume_stem(image_path))
        mask = template.mask
        if mask is not None:
            template.labels = choose_labels(mask, labels, label_names, mask_path)
        elif labels:
            raise MedshotError("--labels needs --mask")
        template.validate()
        return template


def _read_spec(json_path: Path) -> dict:
    from ..template import read_template_json

    return read_template_json(json_path)


def is_volume_template(json_path: str | Path) -> bool:
    """Whether a template JSON describes a volume (``"kind": "volume"``); False for anything unreadable."""
    try:
        spec = json.loads(Path(json_path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(spec, dict) and spec.get("kind") == KIND


_NAME_COLUMNS = ("name", "landmark", "landmark_id", "structure")
_IMAGE_COLUMNS = ("image", "id", "target")
_SYSTEMS = {
    "voxel": ("i", "j", "k"),
    "ras": ("x_mm", "y_mm", "z_mm"),
    "ras2": ("x_ras", "y_ras", "z_ras"),
    "lps": ("x_lps", "y_lps", "z_lps"),
}


def read_landmarks_csv_3d(path: str | Path, volume: Volume, image_name: str | None = None) -> list[Landmark3D]:
    """Landmarks from a CSV whose header names the coordinate system.

    Columns: a name (``name``, ``landmark``, ``landmark_id`` or ``structure``) and either voxel
    indices ``i,j,k`` of the image's array or world millimetres ``x_mm,y_mm,z_mm`` (RAS+, as in the
    NIfTI affine; also ``x_ras,...``) or ``x_lps,y_lps,z_lps`` (DICOM patient coordinates). With
    both voxel and mm columns the voxel ones are used. An ``image`` (or ``id``) column selects the
    rows of ``image_name`` when the CSV covers several volumes.
    """
    path = Path(path)
    if not path.exists():
        raise MedshotError("landmark file not found", path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedshotError(f"cannot read CSV ({exc})", path) from exc
    if not rows:
        raise MedshotError("landmark CSV has no rows", path)
    cols = {c.strip().lower(): c for c in rows[0].keys() if c is not None}
    name_col = next((cols[c] for c in _NAME_COLUMNS if c in cols), None)
    system = next((s for s, names in _SYSTEMS.items() if all(n in cols for n in names)), None)
    if name_col is None or system is None:
        if name_col is not None and all(c in cols for c in ("x", "y", "z")):
            raise MedshotError("landmark CSV columns x,y,z are ambiguous for a volume: name them i,j,k (voxels) "
                               "or x_mm,y_mm,z_mm (world RAS mm)", path)
        raise MedshotError("landmark CSV needs a name column and i,j,k (voxels) or x_mm,y_mm,z_mm (mm)", path)
    image_col = next((cols[c] for c in _IMAGE_COLUMNS if c in cols), None)
    if image_col is not None and image_name is not None:
        wanted = {image_name, volume_stem(image_name)}
        selected = [r for r in rows if volume_stem(str(r[image_col]).strip()) in wanted]
        if not selected:
            raise MedshotError(f"no rows for '{image_name}' in its '{image_col}' column", path)
        rows = selected
    out = []
    names = [cols[c] for c in _SYSTEMS[system]]
    for line, r in enumerate(rows, start=2):
        try:
            v = np.array([float(r[c]) for c in names])
        except (TypeError, ValueError) as exc:
            raise MedshotError(f"line {line}: {', '.join(names)} must be numbers", path) from exc
        if system == "lps":
            v = v * np.array([-1.0, -1.0, 1.0])
        ijk = v if system == "voxel" else volume.world_to_source(v[None])[0]
        out.append(Landmark3D(str(r[name_col]).strip(), ijk))
    lm_names = [lm.name for lm in out]
    if len(set(lm_names)) != len(lm_names):
        raise MedshotError("landmark names repeat (several volumes? add an 'image' column)", path)
    return out
