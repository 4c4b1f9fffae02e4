"""A pixel classifier per batch: the appearance of each label, learned from the template and the confident
pseudo-templates of batch mode, refines the boundaries of the label maps.

Registration and the random walker place a boundary where the template's shape and the target's edges
agree; what a label *looks like* in this batch (its texture, its contrast with what surrounds it) is
known only from the images of the batch. A random forest on multiscale intensity, gradient and Hessian
features (scikit-learn, trained on class-balanced pixel samples of the template's truth and of the pool
members' label maps) gives each pixel's appearance likelihood per class; a shape prior from the target's
own label map (a logistic of each label's signed distance in mm, of width ``width`` × the label's
equivalent radius) keeps the label where it was, and each voxel near a boundary takes the class of the
highest likelihood × prior.

Targets are refined in two folds (even and odd positions in the batch): a target's classifier never saw
its own pseudo-label, only the template and the other fold's pool members; a fold whose other fold has
no pool member is left as it is (the template alone teaches too little: ``clf10t`` in docs/batch_mode.md).
The forests are seeded, so the same inputs give the same label maps, whatever the workers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.errors import MedshotError
from ..core.intensity import normalize_intensity
from ..core.labels import equivalent_radius
from ..data.image import Image
from .result import TargetResult


def fold_of(position: int) -> int:
    """The fold of the target at ``position`` in the batch (its forest never saw it)."""
    return position % 2


# Gaussian scales of the features, in pixels of the finest axis: the five scales of scikit-image's
# multiscale_basic_features (sigma 1 to 16), which the first experiment used; not tuned.
SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
# Pixels per class per training image. Class-balanced, so that the forest gives likelihood ratios (the
# prior says how much of each class to expect) and a small label is not drowned by the background.
SAMPLES_PER_CLASS = 3000
# The forests' size: not tuned; 50 trees of depth 12 (leaves of 5 samples or more) train in seconds on
# the ~6000 samples per image and were the only size measured (docs/batch_mode.md).
FOREST = dict(n_estimators=50, max_depth=12, min_samples_leaf=5, n_jobs=1)
# The Gaussian kernels end at this many scales (scipy's default is 4), and a box's margin is as wide as the
# largest kernel: the features of a box are then exactly those of the whole image (tests/test_classifier.py).
TRUNCATE = 3.0
# The shape prior's logistic reaches 0.95 at 3 widths from the boundary: farther, nothing changes.
BAND = 3.0


def pixel_features(image: Image, window, box: tuple[slice, ...], where: np.ndarray) -> np.ndarray:
    """``(len(where), F)`` float32 features at the flat indices ``where`` of ``image[box]``: per scale of
    :data:`SIGMAS`, the smoothed intensity, its gradient magnitude and the eigenvalues of its Hessian
    (scales in pixels of the finest axis, the same in mm on every axis).

    One filtered copy of the box at a time (a CT's box is hundreds of MB): the features are kept only
    where they are asked for.
    """
    spacing = np.asarray(image.spacing, float)
    # a margin of the largest kernel, so that the box's features are those of the whole image
    margin = [int(np.ceil(TRUNCATE * SIGMAS[-1] * spacing.min() / s)) + 1 for s in spacing]
    outer = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, image.shape))
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    work = normalize_intensity(image.array[outer], window)
    ndim = work.ndim
    out = []

    def at(filtered: np.ndarray) -> np.ndarray:
        return filtered[inner].reshape(-1)[where]

    for sigma in SIGMAS:
        scales = sigma * spacing.min() / spacing
        out.append(at(ndimage.gaussian_filter(work, scales, truncate=TRUNCATE)))
        out.append(at(ndimage.gaussian_gradient_magnitude(work, scales, truncate=TRUNCATE)))
        hessian = np.empty((len(where), ndim, ndim), np.float32)
        for i in range(ndim):
            for j in range(i, ndim):
                order = [0] * ndim
                order[i] += 1
                order[j] += 1
                hessian[:, i, j] = hessian[:, j, i] = at(ndimage.gaussian_filter(work, scales, order=order,
                                                                                  truncate=TRUNCATE))
        out.extend(np.linalg.eigvalsh(hessian).T)
    return np.stack(out, axis=-1).astype(np.float32)


def label_box(label_map: np.ndarray, spacing: np.ndarray, width: float) -> tuple[slice, ...] | None:
    """The box around every label and the band of its shape prior (None for an empty map)."""
    labels = [v for v in np.unique(label_map) if v != 0]
    if not labels:
        return None
    reach = BAND * width * max(radius_mm(label_map == v, spacing) for v in labels)
    margin = np.ceil(reach / np.asarray(spacing, float)).astype(int) + 1
    found = np.argwhere(label_map != 0)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + 1 + margin, label_map.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def context_box(label_map: np.ndarray) -> tuple[slice, ...]:
    """The labels' bounding box grown by its own size on every side (clipped to the image): the context
    whose background the forest learns to tell from the labels."""
    found = np.argwhere(label_map != 0)
    low, high = found.min(axis=0), found.max(axis=0) + 1
    grow = high - low
    return tuple(slice(int(max(a - g, 0)), int(min(b + g, n))) for a, b, g, n in zip(low, high, grow, label_map.shape))


def radius_mm(inside: np.ndarray, spacing: np.ndarray) -> float:
    """The radius in mm of the disc (2D) or ball (3D) of the same size as ``inside``."""
    return equivalent_radius(float(inside.sum() * np.prod(spacing)), inside.ndim)


@dataclass
class PixelClassifier:
    """Two seeded forests (one per fold) and what they were trained with.

    Attributes
    ----------
    forests : list
        ``forests[f]`` refines the targets of fold ``f`` (trained on the template and the other fold's
        pool members; None when that fold has none).
    classes : list of int
        0 and the template's labels.
    window : tuple of float or None
        The template's intensity window (features see intensities as matching does).
    width : float
        The shape prior's width, a fraction of each label's equivalent radius.
    """

    forests: list
    classes: list[int]
    window: tuple[float, float] | None
    width: float

    def refine(self, result: TargetResult, fold: int) -> TargetResult:
        """``result`` with its label map refined near the boundaries (the same result when it has none)."""
        if self.forests[fold] is None or result.label_map is None or not np.any(result.label_map):
            return result
        spacing = np.asarray(result.image.spacing, float)
        box = label_box(result.label_map, spacing, self.width)
        before = result.label_map[box]
        refined = result.label_map.copy()
        refined[box] = refine_labels(before, lambda where: pixel_features(result.image, self.window, box, where),
                                     self.forests[fold], spacing, self.width)
        out = copy.copy(result)
        out.label_map = refined
        out.evidence = {**result.evidence, "classifier changed": int(np.sum(refined[box] != before))}
        return out


def train_classifier(template: Image, truth: np.ndarray, window, pool: dict[int, TargetResult],
                     width: float, seed: int = 0, with_template_only: bool = False) -> PixelClassifier:
    """The :class:`PixelClassifier` of a batch.

    Parameters
    ----------
    template : Image
    truth : ndarray (M, N[, P]) int
        The template's label map on its grid.
    window : tuple of float or None
    pool : dict
        Position in the batch -> the pool member's result (its image and label map).
    width : float
    seed : int
    with_template_only : bool
        Train a fold's forest even when the other fold has no pool member (for measuring the template's
        share; batch mode leaves such a fold as it is).
    """
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as exc:
        raise MedshotError("the pixel classifier of batch mode needs scikit-learn (pip install scikit-learn), "
                           "or turn it off (--batch-classifier off)") from exc

    classes = sorted({0, *(int(v) for v in np.unique(truth))})
    own = _samples(template, truth, window, classes, seed)
    members = {i: _samples(r.image, r.label_map, window, classes, seed + 1 + i) for i, r in sorted(pool.items())
               if r.label_map is not None and np.any(r.label_map)}
    forests = []
    for fold in (0, 1):
        others = [s for i, s in members.items() if fold_of(i) != fold]
        if not others and not with_template_only:
            forests.append(None)
            continue
        parts = [own, *others]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        forest = RandomForestClassifier(**FOREST, random_state=seed)
        forests.append(forest.fit(x, y))
    return PixelClassifier(forests, classes, window, width)


def _samples(image: Image, label_map: np.ndarray, window, classes: list[int],
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced pixel samples (features, class) of one image, within its labels' :func:`context_box`."""
    box = context_box(label_map)
    labels = label_map[box].reshape(-1)
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        where = np.flatnonzero(labels == c)
        if where.size:
            picks.append(rng.choice(where, min(SAMPLES_PER_CLASS, where.size), replace=False))
    pick = np.sort(np.concatenate(picks))
    return pixel_features(image, window, box, pick), labels[pick]


def refine_labels(label_map: np.ndarray, features, forest, spacing: np.ndarray, width: float) -> np.ndarray:
    """``label_map`` with each pixel within :data:`BAND` prior widths of a boundary given the class of the
    highest forest likelihood × shape prior (``features(where)``: the features at flat indices ``where``)."""
    labels = [int(v) for v in np.unique(label_map) if v != 0]
    z, band = [], np.zeros(label_map.shape, bool)
    for lab in labels:
        inside = label_map == lab
        signed = (ndimage.distance_transform_edt(inside, sampling=spacing)
                  - ndimage.distance_transform_edt(~inside, sampling=spacing))
        z.append(signed / max(width * radius_mm(inside, spacing), 1e-6))
        band |= np.abs(z[-1]) < BAND
    where = np.flatnonzero(band.reshape(-1))
    if where.size == 0:  # labels of a pixel or so: no boundary wide enough to move
        return label_map
    z = np.stack(z)
    z = z.reshape(len(labels), -1)[:, where]
    # log prior: inside a label, log sigmoid(z); the background, outside every label
    log_prior = np.concatenate([np.sum(-np.logaddexp(0, z), axis=0)[None], -np.logaddexp(0, -z)])
    proba = forest.predict_proba(features(where))
    known = list(forest.classes_)
    score = np.full(log_prior.shape, -np.inf)
    for k, c in enumerate([0, *labels]):
        if c in known:
            # a floor, so that a class the forest all but rules out is still chosen where the prior insists
            score[k] = np.log(proba[:, known.index(c)] + 1e-3) + log_prior[k]
    out = label_map.reshape(-1).copy()
    out[where] = np.array([0, *labels], out.dtype)[np.argmax(score, axis=0)]
    return out.reshape(label_map.shape)
