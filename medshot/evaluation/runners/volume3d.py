"""3D volumes (NIfTI, DICOM series folders) through :class:`medshot.volume.pipeline3d.VolumeShot`.

Points and label maps are in the target file's own voxel array (source ``i, j, k``), as the
ground-truth label maps and landmark CSVs (``*centroids*voxel.csv``) are written; spacing is the
length of the source affine's columns (mm per voxel along ``i``, ``j``, ``k``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import MedshotError
from ...volume.io3d import Volume, load_label_volume, load_volume, read_label_volume, volume_stem
from ...volume.template3d import Landmark3D, VolumeTemplate, read_landmarks_csv_3d
from ..cases import Case, Entry
from .base import Prediction, Runner, View

# Segmenter names of the CLI -> VolumeShot's label-map refinement. "classical" is the carried label
# map with 3D clean-up (the volume default, as in `medshot segment`); "randomwalker" adds the 3D
# random walker in a band around each boundary.
REFINES = {"classical": "none", "randomwalker": "randomwalker"}
# "<method>@medshot" starts the registration from medshot's global placement instead of the centres of mass.
BASELINES_3D = ("affine", "bspline", "affine@medshot", "bspline@medshot")


class VolumeRunner(Runner):
    """Runner for volumes: cases.csv points are source voxel indices ``i, j, k``."""

    kind = "3d"
    point_columns = {"i": 0, "j": 1, "k": 2}
    element = "voxels"
    prediction_suffix = ".nii.gz"

    # -- data ----------------------------------------------------------------------------------

    def read_case(self, entry: Entry) -> Case:
        vol = load_volume(entry.image)
        spacing = entry.spacing or tuple(float(s) for s in source_spacing(vol))
        if len(spacing) != 3:
            raise MedshotError(f"spacing needs three values (i, j, k) for a volume, got {len(spacing)}",
                               entry.where or entry.image)
        labels: tuple[int, ...] = ()
        if entry.mask is not None:
            mask, _ = read_label_volume(entry.mask, vol)
            labels = tuple(int(v) for v in np.unique(mask) if v != 0)
            del mask
        landmarks: list[Landmark3D] = []
        if isinstance(entry.landmarks, Path):
            landmarks = read_landmarks_csv_3d(entry.landmarks, vol, image_name=volume_stem(entry.image))
        elif entry.landmarks:
            landmarks = _inline_landmarks(entry.landmarks, vol, entry)
        return Case(entry.name or volume_stem(entry.image), entry.image, entry.mask, landmarks, spacing,
                    tuple(vol.source_shape), labels, vol.source_affine.copy())

    def truth(self, case: Case) -> np.ndarray:
        assert case.mask is not None
        vol = load_volume(case.image)
        return vol.to_source_array(load_label_volume(case.mask, vol))

    def truth_points(self, case: Case) -> dict[str, np.ndarray]:
        return {lm.name: np.asarray(lm.ijk, float) for lm in case.landmarks}

    # -- methods -------------------------------------------------------------------------------

    def segmenter_names(self) -> list[str]:
        return list(REFINES)

    def segmenter_status(self, name: str) -> tuple[bool, str]:
        if name in REFINES:
            return True, "weights-free"
        return False, f"not available for volumes (volumes take {' or '.join(REFINES)})"

    def baseline_names(self) -> tuple[str, ...]:
        return BASELINES_3D

    def baseline_status(self, name: str) -> tuple[bool, str]:
        if name not in BASELINES_3D:
            return False, f"2D only (volumes take {', '.join(BASELINES_3D)})"
        try:
            import SimpleITK  # noqa: F401
        except ImportError:
            return False, "needs SimpleITK (pip install SimpleITK)"
        return True, "available"

    # -- running -------------------------------------------------------------------------------

    def make_template(self, case: Case, label_names: dict[int, str]) -> VolumeTemplate:
        """A :class:`VolumeTemplate` from the case's volume, label map (every label) and landmarks."""
        from ...template import choose_labels

        template = VolumeTemplate(image_path=case.image, mask_path=case.mask, window=self.window)
        if template.mask is not None:
            template.labels = choose_labels(template.mask, None, label_names, case.mask)
        template.landmarks = [Landmark3D(lm.name, np.asarray(lm.ijk, float)) for lm in case.landmarks]
        template.validate()
        return template

    def template_labels(self, template: VolumeTemplate) -> dict[int, str]:
        return template.labels

    def make_shot(self, template: VolumeTemplate, backbone: str, segmenter: str):
        from ...volume.pipeline3d import VolumeShot

        return VolumeShot(template, backbone=backbone, refine=REFINES[segmenter], window=self.window)

    def predict(self, shot, target: Case, landmarks: bool, masks: bool, baseline: str | None) -> Prediction:
        if baseline is None:
            result = shot.run(target.image, landmarks=landmarks, masks=masks)
        else:
            from ...match.intensity import single_threaded

            # ITK's multi-threaded metrics sum in a varying order: one thread makes reruns (and resumed
            # runs) give the same numbers, as the 2D baselines do.
            with single_threaded():
                result = shot.run(target.image, landmarks=landmarks, masks=masks, baseline=baseline)
        label_map = None if result.label_map is None else result.volume.to_source_array(result.label_map)
        return Prediction(label_map, dict(result.scores),
                          {lm.name: np.asarray(lm.ijk, float) for lm in result.landmarks},
                          {lm.name: lm.confidence for lm in result.landmarks})

    def save_prediction(self, path: Path, prediction: Prediction, target: Case) -> None:
        import nibabel as nib

        from ...outputs import label_dtype, nifti_gz_bytes

        labels = np.asarray(prediction.label_map)
        dtype = label_dtype(labels)
        img = nib.Nifti1Image(labels.astype(dtype), target.affine)
        img.header.set_data_dtype(dtype)
        Path(path).write_bytes(nifti_gz_bytes(img))

    def view(self, target: Case, prediction_file: Path | None) -> View:
        """The slice ``k`` (source axis 2) where the truth (else the prediction) covers most voxels.

        Shown with ``i`` across and ``j`` upwards (for RAS+ data: an axial slice seen from below).
        """
        from ...io import normalize_intensity

        vol = load_volume(target.image)
        image = normalize_intensity(vol.to_source_array(vol.array), self.window)
        truth = vol.to_source_array(load_label_volume(target.mask, vol)) if target.mask is not None else None
        label_map = None
        if prediction_file is not None and prediction_file.exists():
            import nibabel as nib

            label_map = np.asarray(nib.load(str(prediction_file)).dataobj)
        area = next((np.count_nonzero(m, axis=(0, 1)) for m in (truth, label_map) if m is not None and m.any()), None)
        k = int(np.argmax(area)) if area is not None else image.shape[2] // 2

        def show(a):
            return None if a is None else np.flipud(a[:, :, k].T)

        return View(show(image), show(label_map), show(truth), f"slice k = {k}")


def source_spacing(vol: Volume) -> np.ndarray:
    """Voxel size (mm) along the source array's axes ``i, j, k``: the lengths of the affine's columns."""
    return np.sqrt(np.sum(np.square(vol.source_affine[:3, :3]), axis=0))


def _inline_landmarks(items: list[dict], vol: Volume, entry: Entry) -> list[Landmark3D]:
    out = []
    try:
        for d in items:
            if all(k in d for k in "ijk"):
                ijk = np.array([float(d[k]) for k in "ijk"])
            else:
                ijk = vol.world_to_source(np.array([[float(d[k]) for k in ("x_mm", "y_mm", "z_mm")]]))[0]
            out.append(Landmark3D(str(d["name"]), ijk))
    except (KeyError, TypeError, ValueError) as exc:
        raise MedshotError(f"case '{volume_stem(entry.image)}': volume landmarks need name and i, j, k (voxels) or "
                           f"x_mm, y_mm, z_mm ({type(exc).__name__}: {exc})", entry.where or entry.image) from exc
    return out
