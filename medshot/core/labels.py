"""Label maps: which labels to use, and prompt points sampled from a label's region (any dimension)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import MedshotError


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks of any dimension; 1.0 when both are empty."""
    p, t = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / total)


def choose_labels(mask: np.ndarray, labels: list[int] | None, label_names: dict[int, str] | None,
                  mask_path: str | Path | None) -> dict[int, str]:
    """The labels to use (all non-zero ones by default) with their names; one-line errors otherwise."""
    present = sorted(set(np.unique(mask).tolist()) - {0})
    if not present:
        raise MedshotError("mask is empty (no label other than 0)", mask_path)
    chosen = present if labels is None else list(labels)
    for label in chosen:
        if label not in present:
            raise MedshotError(f"label {label} is absent from the mask (present: "
                               f"{', '.join(map(str, present))})", mask_path)
    names = label_names or {}
    return {label: names.get(label, f"label {label}") for label in chosen}


def sample_prompts(region: np.ndarray, n_positive: int = 5, n_negative: int = 4,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positive points spread inside ``region`` and negative points in a ring just outside it.

    Positives are chosen by farthest-point sampling among the region's deeper half (by distance to
    its edge), starting at its deepest pixel; negatives likewise in a ring whose width scales with
    the region's size. Returns ``(positive, negative)``, each ``(N, ndim)`` array indices.
    """
    region = np.asarray(region, bool)
    d = region.ndim
    dist = ndimage.distance_transform_edt(region)
    inner = region & (dist >= max(1.0, 0.5 * dist[region].max()))
    points = np.argwhere(inner).astype(float)
    positive = farthest_points(points, n_positive, int(np.argmax(dist[inner])))
    radius = equivalent_radius(region.sum(), d)
    gap, width = max(1.0, 0.1 * radius), max(2.0, 0.2 * radius)
    outside = ndimage.distance_transform_edt(~region)
    ring = np.argwhere((outside > gap) & (outside <= gap + width)).astype(float)
    negative = np.zeros((0, d))
    if len(ring):
        rng = np.random.default_rng(seed)
        negative = farthest_points(ring, n_negative, int(rng.integers(len(ring))))
    return positive, negative


def farthest_points(points: np.ndarray, k: int, start: int) -> np.ndarray:
    """``k`` of ``points`` ``(N, ndim)`` by farthest-point sampling from ``points[start]``."""
    if len(points) == 0 or k <= 0:
        return np.zeros((0, points.shape[1] if points.ndim == 2 else 2))
    chosen = [start]
    d = np.linalg.norm(points - points[start], axis=1)
    for _ in range(min(k, len(points)) - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return points[chosen]


def equivalent_radius(count: float, ndim: int) -> float:
    """Radius (pixels) of the disc (``ndim`` 2) or ball (3) of ``count`` pixels (voxels)."""
    return float(np.sqrt(count / np.pi)) if ndim == 2 else float((3 * count / (4 * np.pi)) ** (1 / 3))
