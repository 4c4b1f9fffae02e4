"""Weights-free promptable segmenters: the carried mask itself, and random-walker refinement of it.

``classical`` (the default) keeps each label's mask as the verified correspondence carries it;
measured on the tune half of the development data (``benchmarks/tune_2d.py``), refining it with a
random walker did not improve it on any task, at any of the settings tried. Where the template has
prompt points but no mask, there is nothing to carry, and the random walker grows the region from
the points. ``randomwalker`` always refines:

For each label, a region of interest is cut around its prompts; foreground seeds are the positive
points and the core of the coarse mask, background seeds are the negative points, the region
beyond an uncertainty band around the coarse mask and the border of the region. The random walker
(Grady 2006) then decides the band from image edges (and, when given, from the feature-similarity
foreground probability as a second channel).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from skimage.segmentation import random_walker

from ..core.geometry import resize_image
from ..core.labels import dice, equivalent_radius
from .base import Prompt, Segmentation, box_from_mask, box_from_points, resolve_overlaps

FALLBACK_SCORE_FACTOR = 0.5  # score of a carried mask kept because the walker failed


class ClassicalSegmenter:
    """The carried mask where the template has one; a random walker from the prompt points where not.

    Keyword options are handed to the :class:`RandomWalkerSegmenter` used for point-only prompts.
    """

    name = "classical"

    def __init__(self, **walker_options):
        self.walker = RandomWalkerSegmenter(**walker_options)

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Segmentation]:
        carried = [p for p in prompts if p.mask is not None and np.any(p.mask)]
        grown = {s.label: s for s in self.walker.segment(image, [p for p in prompts if p not in carried])}
        return [Segmentation(p.label, np.asarray(p.mask, bool), None) if p in carried else grown[p.label]
                for p in prompts]


class RandomWalkerSegmenter:
    """Random-walker segmenter driven by points, an optional box and an optional coarse mask.

    Parameters
    ----------
    band : float
        Half-width of the undecided band around a coarse mask, as a fraction of the structure's
        equivalent radius (at least ``min_band_px``).
    beta : float
        Random-walker edge sensitivity.
    max_side : int
        Regions of interest larger than this (pixels) are solved at reduced resolution.
    min_agreement : float
        Dice between the walker's mask and the coarse mask below which the coarse mask is kept.
    """

    name = "randomwalker"

    def __init__(self, band: float = 0.25, min_band_px: float = 2.0, beta: float = 90.0, max_side: int = 160,
                 point_radius: float = 1.5, min_agreement: float = 0.6):
        self.band = band
        self.min_band_px = min_band_px
        self.beta = beta
        self.max_side = max_side
        self.point_radius = point_radius
        self.min_agreement = min_agreement

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Segmentation]:
        image = np.asarray(image, dtype=np.float32)  # (M, N) image or (M, N, P) volume, grayscale
        results = [self._segment_safely(image, p) for p in prompts]
        return resolve_overlaps(results, inside_without_map=0.0)

    def _segment_safely(self, image: np.ndarray, prompt: Prompt) -> tuple[Segmentation, np.ndarray | None]:
        """One label; should the walker fail on it, the carried mask stands, with a halved score."""
        try:
            return self._segment_one(image, prompt)
        except Exception as exc:  # noqa: BLE001 - one label's failure must not lose the target
            warnings.warn(f"random walker failed for label {prompt.label} ({type(exc).__name__}: {exc}); "
                          "kept the carried mask", RuntimeWarning, stacklevel=2)
            mask = np.zeros(image.shape, bool) if prompt.mask is None else np.asarray(prompt.mask, bool)
            return Segmentation(prompt.label, mask, FALLBACK_SCORE_FACTOR * float(mask.any())), None

    # ------------------------------------------------------------------------------------------

    def _segment_one(self, image: np.ndarray, prompt: Prompt) -> tuple[Segmentation, np.ndarray | None]:
        shape = np.array(image.shape)
        d = image.ndim
        coarse = None if prompt.mask is None else np.asarray(prompt.mask, dtype=bool)
        if coarse is not None and not coarse.any():
            coarse = None
        pos = np.asarray(prompt.positive, dtype=np.float64).reshape(-1, d)
        neg = np.asarray(prompt.negative, dtype=np.float64).reshape(-1, d)
        if coarse is None and len(pos) == 0 and prompt.box is None:
            return Segmentation(prompt.label, np.zeros(image.shape, bool), 0.0), None

        # Region of interest around everything we know about the structure.
        boxes = []
        if coarse is not None:
            boxes.append(box_from_mask(coarse))
        if len(pos):
            boxes.append(box_from_points(pos))
        if prompt.box is not None:
            boxes.append(np.asarray(prompt.box, dtype=np.float64))
        b = np.array(boxes)
        lo, hi = b[:, :d].min(0), b[:, d:].max(0)
        size = float((hi - lo).max()) + 1
        margin = 0.25 * size + 4 if coarse is not None else 0.5 * size + 6
        r0 = np.maximum(0, np.floor(lo - margin)).astype(int)
        r1 = np.minimum(shape - 1, np.ceil(hi + margin)).astype(int)
        roi = tuple(slice(a, b + 1) for a, b in zip(r0, r1))
        extent = r1 - r0 + 1
        factor = min(1.0, self.max_side / float(extent.max()))
        small = tuple(max(4, int(round(n * factor))) for n in extent)
        f = np.array(small, float) / extent

        sub = resize_image(image[roi], small)
        seeds = np.zeros(small, dtype=np.int32)
        grid = np.indices(small).astype(np.float64)

        if coarse is not None:
            c = resize_image(coarse[roi].astype(np.float32), small) > 0.5
            dist_in = ndimage.distance_transform_edt(c)
            dist_out = ndimage.distance_transform_edt(~c)
            # The undecided band grows with the structure's size but never beyond its thickness (largest
            # inscribed radius): around a thin structure (a cord) a wide band lets the walker leak.
            thickness = dist_in.max()
            radius = equivalent_radius(c.sum(), d)
            band = max(self.min_band_px * f.max(), min(self.band * radius, thickness))
            core = dist_in > band
            if not core.any():
                core = dist_in >= thickness  # the medial ridge: still an interior seed
            seeds[dist_out > band] = 2
            seeds[core] = 1
        # The region's faces are background, except where the region touches the image's edge.
        border = np.zeros(small, bool)
        for axis in range(d):
            if r0[axis] > 0:
                border[(slice(None),) * axis + (0,)] = True
            if r1[axis] < shape[axis] - 1:
                border[(slice(None),) * axis + (-1,)] = True
        seeds[border & (seeds == 0)] = 2
        r = max(self.point_radius * f.max(), 1.0)
        for points, value in ((neg, 2), (pos, 1)):
            for p in points:
                at = ((p - r0) * f).reshape((d,) + (1,) * d)
                seeds[((grid - at) ** 2).sum(0) <= r * r] = value
        if not (seeds == 1).any():
            return Segmentation(prompt.label, np.zeros(image.shape, bool), 0.0), None
        if not (seeds == 2).any():
            seeds[0] = np.where(seeds[0] == 0, 2, seeds[0])

        channels = [ndimage.gaussian_filter(sub.astype(np.float64), 0.7)]
        if prompt.foreground_prob is not None:
            channels.append(resize_image(np.asarray(prompt.foreground_prob, np.float32)[roi], small))
        stack = np.stack(channels, axis=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = random_walker(stack, seeds, beta=self.beta, mode="bf" if seeds.size <= 40000 else "cg_j",
                                 return_full_prob=True, channel_axis=-1, tol=1e-3)
        if full.dtype == bool:
            # The seeds left nothing to decide (a structure carried to a pixel or two, as on real CT
            # slices): scikit-image then hands back the seed masks, one label per *last* axis.
            prob = full[..., 0].reshape(small).astype(np.float32)
        else:
            prob = np.nan_to_num(full[0].astype(np.float32), nan=0.0)
        full_prob = resize_image(prob, tuple(extent))
        mask_roi = full_prob > 0.5
        mask_roi = _keep_seeded_components(mask_roi, pos - r0, coarse[roi] if coarse is not None else None)
        mask_roi = ndimage.binary_fill_holes(mask_roi)
        if coarse is not None:
            agreement = dice(mask_roi, coarse[roi])
            if agreement < self.min_agreement:
                # The walker drifted far from the carried shape (typically a leak along a weak edge): the
                # carried mask is the safer answer.
                mask_roi = coarse[roi].copy()
                full_prob = np.where(mask_roi, 0.75, 0.25)
        mask = np.zeros(image.shape, bool)
        mask[roi] = mask_roi
        prob_full = np.zeros(image.shape, np.float32)
        prob_full[roi] = full_prob
        undecided = seeds == 0
        confidence = float(np.mean(np.abs(2 * prob[undecided] - 1))) if undecided.any() else 1.0
        score = confidence if mask.any() else 0.0
        return Segmentation(prompt.label, mask, score), prob_full


def _keep_seeded_components(mask: np.ndarray, positive: np.ndarray, coarse: np.ndarray | None) -> np.ndarray:
    """Drop islands that neither hold a positive point nor overlap the coarse mask's largest part."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    keep = set()
    for p in np.round(positive).astype(int):
        if np.all((p >= 0) & (p < np.array(mask.shape))) and lab[tuple(p)] > 0:
            keep.add(int(lab[tuple(p)]))
    if coarse is not None and coarse.any():
        overlap = np.bincount(lab[coarse], minlength=n + 1)
        overlap[0] = 0
        keep.add(int(np.argmax(overlap)))
    if not keep:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        keep.add(int(np.argmax(sizes)))
    return np.isin(lab, list(keep))
