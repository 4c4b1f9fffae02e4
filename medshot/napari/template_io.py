"""Saving a template annotated in napari, through the same classes as ``medshot template`` (no Qt).

Kept apart from the panel so that the JSON contract has one call site to re-point: what the panel
collects (names, points, a label map, label names) becomes a :class:`~medshot.template.Template`
or :class:`~medshot.volume.template3d.VolumeTemplate`, is validated and saved by its own ``save``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from .layers import Frame, frame_of


def data_in_frame(layer, image_layer) -> np.ndarray:
    """A Points layer's data ``(N, ndim)`` in the image layer's data coordinates.

    Layers made for the image share its frame and need no conversion; any other Points layer (one
    a user added by hand, say) is mapped through napari's world coordinates.
    """
    data = np.asarray(layer.data, float)
    if frame_of(layer) is frame_of(image_layer) or len(data) == 0:
        return data
    return np.array([image_layer.world_to_data(layer.data_to_world(p)) for p in data], float)


def save_template(path: Path, frame: Frame, landmarks: tuple[list[str], np.ndarray] | None,
                  prompts: tuple[list[int], list[bool], np.ndarray] | None, mask: np.ndarray | None,
                  label_names: dict[int, str]) -> Path:
    """Write ``path`` (template JSON) and, with a mask, ``<stem>_mask.png|.nii.gz`` beside it.

    Parameters
    ----------
    frame : Frame
        The template image's frame.
    landmarks : (names, points) or None
        Points ``(N, ndim)`` in napari data coordinates of the image, in the template's order.
    prompts : (labels, positive flags, points) or None
        2D only; points ``(N, 2)`` in napari data coordinates.
    mask : ndarray or None
        Label map in medshot's layout (2D ``(H, W)``; volume canonical ``(X, Y, Z)``).
    label_names : dict
        Label -> name; unnamed labels are called ``label <n>`` as ``medshot template`` calls them.

    Raises
    ------
    MedshotError
        Nothing to save, unnamed or repeated landmark names, prompt points on a volume, or a
        template that does not validate (a landmark outside the image, say).
    """
    path = Path(path)
    if not path.name.lower().endswith(".json"):
        raise MedshotError("a template is saved as a .json file", path)
    image = frame.source
    if image.path is None:
        raise MedshotError("the image has no file; open it from a file to make a template of it")
    if landmarks is None and prompts is None and mask is None:
        raise MedshotError("nothing to save: place landmarks or prompt points, or paint a label", path)
    names = list(landmarks[0]) if landmarks else []
    if any(not n.strip() for n in names):
        raise MedshotError("every landmark needs a name", path)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MedshotError(f"landmark names repeat ({', '.join(dup)})", path)
    if frame.is_volume and prompts is not None:
        raise MedshotError("volume templates hold no prompt points; remove them or paint the label map", path)
    mask_path = _write_mask(path, frame, mask) if mask is not None else None
    if frame.is_volume:
        return _save_volume(path, frame, names, landmarks, mask, mask_path, label_names)
    return _save_2d(path, frame, names, landmarks, prompts, mask, mask_path, label_names)


def _write_mask(path: Path, frame: Frame, mask: np.ndarray) -> Path:
    from ..outputs import mask_suffix, write_bytes_atomic
    from .writer import label_bytes_in_frame

    suffix = "_mask.nii.gz" if frame.is_volume else mask_suffix(frame.source)
    stem = path.name[: -len(".json")]
    mask_path = path.parent / f"{stem}{suffix}"
    if Path(frame.source.path).resolve() == mask_path.resolve():
        raise MedshotError("the mask would overwrite the template image; save the template under another name",
                           mask_path)
    # A template read from a 0/255 mask is edited as 0/1; write it back as 0/255 while it stays binary.
    values = frame.info.get("label_values") if set(np.unique(mask).tolist()) <= {0, 1} else None
    write_bytes_atomic(mask_path, label_bytes_in_frame(frame, mask, mask_path, values))
    return mask_path


def _save_2d(path: Path, frame: Frame, names: list[str], landmarks, prompts, mask, mask_path,
             label_names: dict[int, str]) -> Path:
    from ..template import Landmark, PromptPoints, Template, choose_labels, sample_prompts

    image = frame.source
    template = Template(image_path=Path(image.path), mask_path=mask_path, window=frame.info.get("window"),
                        slice_index=image.slice_index if frame.info.get("slice_index") is not None else None)
    if landmarks:
        xy = frame.points_from_display(landmarks[1])
        template.landmarks = [Landmark(n, float(x), float(y)) for n, (x, y) in zip(names, xy)]
    placed: dict[int, tuple[list, list]] = {}
    if prompts is not None:
        xy = frame.points_from_display(prompts[2])
        for label, positive, point in zip(prompts[0], prompts[1], xy):
            placed.setdefault(int(label), ([], []))[0 if bool(positive) else 1].append(point)
    if mask is not None:
        template.labels = choose_labels(mask, None, label_names, mask_path)
    for label in list(template.labels) + sorted(set(placed) - set(template.labels)):
        if label in placed:
            pos, neg = placed[label]
            template.prompts.append(PromptPoints(label, np.array(pos, float).reshape(-1, 2),
                                                 np.array(neg, float).reshape(-1, 2)))
        else:  # as `medshot template` does for a mask
            template.prompts.append(sample_prompts(mask == label, label))
    template.validate()
    template.save(path)
    return path


def _save_volume(path: Path, frame: Frame, names: list[str], landmarks, mask, mask_path,
                 label_names: dict[int, str]) -> Path:
    from ..template import choose_labels
    from ..volume.template3d import Landmark3D, VolumeTemplate

    vol = frame.source
    template = VolumeTemplate(image_path=Path(vol.path), mask_path=mask_path, window=frame.info.get("window"))
    if landmarks:
        ijk = frame.points_from_display(landmarks[1])
        template.landmarks = [Landmark3D(n, v) for n, v in zip(names, ijk)]
    if mask is not None:
        template.labels = choose_labels(mask, None, label_names, mask_path)
    template.validate()
    template.save(path)
    return path
