"""Saving a template annotated in napari, through the same class as ``medshot template`` (no Qt).

Kept apart from the panel so that the JSON contract has one call site: what the panel collects
(names, points, a label map, label names) becomes a :class:`~medshot.data.template.Template`
(2D or volume alike), is validated and saved by its own ``save``.
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
        Points ``(N, ndim)`` in napari data coordinates.
    mask : ndarray or None
        Label map on the image's grid (2D ``(H, W)``; volume canonical ``(X, Y, Z)``).
    label_names : dict
        Label -> name; unnamed labels are called ``label <n>`` as ``medshot template`` calls them.

    Raises
    ------
    MedshotError
        Nothing to save, unnamed or repeated landmark names, or a template that does not validate
        (a landmark outside the image, say).
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
    mask_path = _mask_path(path, frame) if mask is not None else None
    new_mask = mask_path is not None and not mask_path.exists()
    if mask_path is not None:
        _write_mask(mask_path, frame, mask)
    try:
        return _save(path, frame, image, mask_path, mask, landmarks, names, prompts, label_names)
    except BaseException:
        if new_mask:  # a failed save leaves nothing behind
            mask_path.unlink(missing_ok=True)
        raise


def _save(path, frame, image, mask_path, mask, landmarks, names, prompts, label_names) -> Path:
    """Build, validate and write the template JSON (the mask file is already written)."""
    from ..core.labels import choose_labels, sample_prompts
    from ..data.annotations import Landmark
    from ..data.template import PromptPoints, Template

    template = Template.from_image(image, mask_path=mask_path, window=frame.info.get("window"),
                                   slice_index=frame.info.get("slice_index"))
    if landmarks:
        points = frame.points_from_display(landmarks[1])
        template.landmarks = [Landmark(n, p) for n, p in zip(names, points)]
    placed: dict[int, tuple[list, list]] = {}
    if prompts is not None:
        points = frame.points_from_display(prompts[2])
        for label, positive, point in zip(prompts[0], prompts[1], points):
            placed.setdefault(int(label), ([], []))[0 if bool(positive) else 1].append(point)
    if mask is not None:
        template.labels = choose_labels(mask, None, label_names, mask_path)
    for label in list(template.labels) + sorted(set(placed) - set(template.labels)):
        if label in placed:
            pos, neg = (np.array(v, float).reshape(-1, frame.ndim) for v in placed[label])
        else:  # sampled from the mask, as `medshot template` does
            pos, neg = sample_prompts(mask == label)
        template.prompts.append(PromptPoints(label, pos, neg))
    template.validate()
    template.save(path)
    return path


def _mask_path(path: Path, frame: Frame) -> Path:
    """Where the painted label map is written: beside the JSON, named after it."""
    from ..data.write import mask_suffix

    mask_path = path.parent / f"{path.name[: -len('.json')]}{mask_suffix(frame.source)}"
    if Path(frame.source.path).resolve() == mask_path.resolve():
        raise MedshotError("the mask would overwrite the template image; save the template under another name",
                           mask_path)
    return mask_path


def _write_mask(mask_path: Path, frame: Frame, mask: np.ndarray) -> None:
    from ..data.write import write_bytes_atomic
    from .writer import label_bytes_in_frame

    # A template read from a 0/255 mask is edited as 0/1; write it back as 0/255 while it stays binary.
    values = frame.info.get("label_values") if set(np.unique(mask).tolist()) <= {0, 1} else None
    write_bytes_atomic(mask_path, label_bytes_in_frame(frame, mask, mask_path, values))
