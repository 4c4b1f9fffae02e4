"""The pictures and DICOM objects ``localize`` and ``segment`` write beside their tables.

2D targets get one ``<stem>_overlay.png``; volumes one picture per structure (three orthogonal
planes through it) or, for landmarks, one row of three planes per landmark. Every picture has a
legend naming what it shows in the colour it is drawn in. DICOM targets of ``segment`` also get a
SEG and an RTSTRUCT (:mod:`medshot.data.dicom_out`) whose names and colours are the legend's.
"""

from __future__ import annotations

import numpy as np


def label_names(template, labels: list[int], values: dict[int, int]) -> dict[int, str]:
    """Label -> the name pictures and DICOM objects give it: the template's name, else ``label <value>``."""
    return {label: template.labels.get(label) or f"label {values.get(label, label)}" for label in labels}


def structures(template, labels: list[int], values: dict[int, int]) -> list:
    """The DICOM structures of a result: file value, name and overlay colour per label."""
    from ..data.dicom_out import Structure
    from ..viz import label_color

    names = label_names(template, labels, values)
    return [Structure(int(values.get(label, label)), names[label], tuple(int(c) for c in label_color(label)))
            for label in labels]


def segment_pictures(image, label_map: np.ndarray, labels: list[int], values: dict[int, int],
                     names: dict[int, str], value_range: tuple[float, float]) -> dict[str, bytes]:
    """PNG pictures of a segmentation: 2D ``<stem>_overlay.png``; volumes ``<stem>_label<value>_overlay.png``
    per structure, three orthogonal planes through it. Legends name the labels."""
    from ..core.intensity import apply_range
    from ..data.write import png_bytes
    from ..viz import overlay, structure_overlay

    if image.ndim == 2:
        pic = overlay(apply_range(image.array, value_range), label_map, label_names=names)
        return {image.stem + "_overlay.png": png_bytes(pic)}
    out = {}
    for label in labels:
        pic = structure_overlay(image.array, label_map, label, image.spacing, value_range, name=names.get(label))
        if pic is not None:
            out[f"{image.stem}_label{values.get(label, label)}_overlay.png"] = png_bytes(pic)
    return out


def landmark_pictures(image, points: np.ndarray, names: list[str],
                      value_range: tuple[float, float]) -> dict[str, bytes]:
    """``<stem>_overlay.png``: the found landmarks, numbered, with a legend of their names.

    Parameters
    ----------
    points : ndarray (N, ndim)
        Landmarks, indices of ``image.array``.
    """
    from ..core.intensity import apply_range
    from ..data.write import png_bytes
    from ..viz import landmark_overlay, overlay

    if image.ndim == 2:
        pic = overlay(apply_range(image.array, value_range), points=points, point_names=names)
    else:
        pic = landmark_overlay(image.array, points, names, image.spacing, value_range)
    return {} if pic is None else {image.stem + "_overlay.png": png_bytes(pic)}


def dicom_results(image, label_map: np.ndarray, template, labels: list[int],
                  values: dict[int, int]) -> dict[str, bytes]:
    """SEG and RTSTRUCT for a DICOM target (file values, template names, overlay colours); {} otherwise."""
    from .. import __version__
    from ..data.dicom_out import dicom_outputs
    from ..data.write import file_label_values

    if image.kind != "dicom":
        return {}
    return dicom_outputs(image, file_label_values(label_map, values), structures(template, labels, values), __version__)
