"""The promptable-segmenter interface shared by the weights-free segmenter and Segment Anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Prompt:
    """Prompts for one label, in target pixels (array indices, as everywhere in medshot).

    Attributes
    ----------
    label : int
        The label value the resulting mask gets.
    positive, negative : ndarray, shape (N, ndim)
        Points inside / outside the structure.
    box : ndarray (2 ndim,) or None
        Box around the structure: its first corner then its last (``(row0, col0, row1, col1)`` in 2D).
    mask : ndarray or None
        Coarse mask on the image's grid (e.g. the template's mask carried to the target), bool.
    foreground_prob : ndarray or None
        Optional per-pixel probability of this label from feature similarity.
    """

    label: int
    positive: np.ndarray
    negative: np.ndarray
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    foreground_prob: np.ndarray | None = None


@dataclass
class Segmentation:
    """One label's result: ``mask`` (the image's shape, bool) at the target's resolution.

    ``score`` is the segmenter's own estimate in [0, 1] that the mask is right (SAM's predicted IoU, the
    random walker's decisiveness, halved where it fell back to the carried mask), or None where it has
    none (the carried mask is exactly what the correspondence gave): the pipeline's score multiplies it.
    """

    label: int
    mask: np.ndarray
    score: float | None


class Segmenter(Protocol):
    name: str

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Segmentation]:
        """Segment every prompt's structure in ``image`` (grayscale ``(M, N[, P])`` float in [0, 1]).

        A segmenter that only handles 2D images says so with a :class:`MedshotError`.

        All prompts of one image are handled in one call, so an expensive image encoding is
        computed once per target.
        """
        ...


def box_from_points(points: np.ndarray, margin: float = 0.0, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Bounding box ``(lo..., hi...)`` of points ``(N, ndim)``, grown by ``margin`` times its size."""
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    grow = margin * (hi - lo + 1)
    box = np.concatenate([lo - grow, hi + grow])
    if shape is not None:
        top = np.array(shape, float) - 1
        box = np.clip(box, 0, np.concatenate([top, top]))
    return box


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """Bounding box ``(lo..., hi...)`` of a mask's pixels, or None when it is empty."""
    where = np.argwhere(mask)
    if len(where) == 0:
        return None
    return np.concatenate([where.min(0), where.max(0)]).astype(np.float64)


def resolve_overlaps(results: list[tuple[Segmentation, np.ndarray | None]],
                     inside_without_map: float = -np.inf) -> list[Segmentation]:
    """Where two labels claim a pixel, the label whose map (probability, logit) is larger there keeps it.

    ``results`` pairs each segmentation with its map on the image's grid, or None (then the map is
    ``inside_without_map`` inside its mask).
    """
    segs = [s for s, _ in results]
    if len(segs) > 1:
        stack = np.stack([np.where(s.mask, inside_without_map if m is None else m, -np.inf) for s, m in results])
        winner = np.argmax(stack, axis=0)
        for i, s in enumerate(segs):
            s.mask = s.mask & (winner == i)
    return segs
