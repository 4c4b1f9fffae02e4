"""The promptable-segmenter interface shared by the weights-free segmenter and Segment Anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Prompt:
    """Prompts for one label, in target pixels.

    Attributes
    ----------
    label : int
        The label value the resulting mask gets.
    positive_xy, negative_xy : ndarray, shape (N, 2)
        Points ``(x, y)`` inside / outside the structure.
    box_xyxy : ndarray (4,) or None
        ``(x0, y0, x1, y1)`` box around the structure.
    mask : ndarray (H, W) bool or None
        Coarse mask (e.g. the template's mask carried to the target).
    foreground_prob : ndarray (H, W) float or None
        Optional per-pixel probability of this label from feature similarity.
    """

    label: int
    positive_xy: np.ndarray
    negative_xy: np.ndarray
    box_xyxy: np.ndarray | None = None
    mask: np.ndarray | None = None
    foreground_prob: np.ndarray | None = None


@dataclass
class Segmentation:
    """One label's result: ``mask`` (H, W) bool at the target's resolution and a score in [0, 1]."""

    label: int
    mask: np.ndarray
    score: float


class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Segmentation]:
        """Segment every prompt's structure in ``image`` ((H, W) float in [0, 1]).

        All prompts of one image are handled in one call, so an expensive image encoding is
        computed once per target.
        """
        ...


def box_from_points(points_xy: np.ndarray, margin: float = 0.0, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of points, grown by ``margin`` times its size."""
    p = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    x0, y0 = p.min(axis=0)
    x1, y1 = p.max(axis=0)
    mx, my = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
    box = np.array([x0 - mx, y0 - my, x1 + mx, y1 + my])
    if shape is not None:
        box = np.clip(box, 0, [shape[1] - 1, shape[0] - 1, shape[1] - 1, shape[0] - 1])
    return box


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
