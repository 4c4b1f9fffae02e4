"""The measurements behind each label's score and each landmark's confidence (see :mod:`medshot.confidence`).

Built once per template (one small verifier per label and per landmark), then asked about every
target's correspondence and results. Points are array order (row, col) on the working grids.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .confidence import LabelEvidence, LandmarkEvidence
from .evaluate import dice
from .match.correspond import Correspondence
from .match.geometry import apply_affine
from .match.verify import Verifier


def _margin(corr: Correspondence, point: np.ndarray, radius: float) -> float:
    """Chosen verification minus the best one among candidates that put ``point`` more than ``radius`` away."""
    chosen = corr.chosen
    at = apply_affine(chosen.matrix, point)[0]
    scale = float(np.sqrt(abs(np.linalg.det(chosen.matrix[:2, :2]))))
    rivals = [c.verification.score for c in corr.candidates
              if np.hypot(*(apply_affine(c.matrix, point)[0] - at)) > radius * scale]
    return chosen.verification.score - (max(rivals) if rivals else 0.0)


def _contrast(image: np.ndarray, inside: np.ndarray, around: np.ndarray) -> float:
    """Mean intensity inside a region minus in a ring around it (0 when either is empty)."""
    if not inside.any() or not around.any():
        return 0.0
    return float(image[inside].mean() - image[around].mean())


def _local(verifier: Verifier, target: np.ndarray, corr: Correspondence):
    """A local verifier's view of the final correspondence (its grid is the correspondence verifier's)."""
    if corr.verified_at is not None and corr.verified_at.shape[1:] == verifier.shape:
        return verifier.score_coords(target, corr.verified_at)
    return verifier(target, corr.matrix)


class Evidence:
    """Per-label and per-landmark verifiers of one template.

    Parameters
    ----------
    image : ndarray (h, w)
        The template's working image in [0, 1].
    informative : ndarray (h, w)
        Informativeness weight per pixel, in [0, 1].
    labels : dict of int -> ndarray (h, w) bool
        Each label's mask on the working grid.
    landmarks : ndarray (N, 2)
        Landmarks on the working grid (row, col).
    side, sigma, eps :
        Settings of the verifiers (:class:`~medshot.match.verify.Verifier`).
    """

    def __init__(self, image: np.ndarray, informative: np.ndarray, labels: dict[int, np.ndarray],
                 landmarks: np.ndarray, side: int = 128, sigma: float = 0.5, eps: float = 1.0):
        weight = 0.1 + 0.9 * informative
        h, w = image.shape
        self.diag = float(np.hypot(h, w))
        self.labels: dict[int, tuple[Verifier, np.ndarray, float, float]] = {}
        self.regions = labels
        self.contrast: dict[int, float] = {}
        for label, region in labels.items():
            area = float(region.sum())
            if area == 0:
                continue
            radius = float(np.sqrt(area / np.pi))
            band = ndimage.distance_transform_edt(~region) <= max(2.0, 0.5 * radius)
            self.contrast[label] = _contrast(image, region, band & ~region)
            center = np.argwhere(region).mean(axis=0)
            self.labels[label] = (Verifier(image, band * weight, side, sigma, eps), center, radius,
                                  np.log10(area / (h * w)))
        yy, xx = np.indices((h, w))
        self.landmarks: list[tuple[Verifier, np.ndarray]] = []
        for p in np.asarray(landmarks, float).reshape(-1, 2):
            disc = (yy - p[0]) ** 2 + (xx - p[1]) ** 2 <= (0.05 * self.diag) ** 2
            self.landmarks.append((Verifier(image, disc * weight, side, sigma, eps), p))

    def for_labels(self, target: np.ndarray, corr: Correspondence) -> dict[int, LabelEvidence]:
        """Evidence per label of the template's mask."""
        v = corr.verification or corr.chosen.verification
        out = {}
        for label, (verifier, center, radius, share) in self.labels.items():
            region = self.regions[label].astype(np.float32)
            carried = ndimage.map_coordinates(region, corr.backward, order=1) > 0.5
            stability = float(np.mean([dice(carried, ndimage.map_coordinates(region, f, order=1) > 0.5)
                                       for f in corr.alternatives])) if corr.alternatives else 1.0
            ring = (ndimage.distance_transform_edt(~carried) <= max(2.0, 0.5 * radius)) & ~carried
            difference = abs(_contrast(target, carried, ring) - self.contrast[label])
            out[label] = LabelEvidence(v.agreement, _local(verifier, target, corr).agreement, v.present,
                                       _margin(corr, center, radius), stability,
                                       float(np.exp(-difference / 0.1)), share)
        return out

    def for_landmarks(self, target: np.ndarray, corr: Correspondence, peak: np.ndarray, mutual: np.ndarray,
                      moved: np.ndarray) -> list[LandmarkEvidence]:
        """Evidence per landmark; ``moved`` is the re-matching shift as a fraction of the search radius."""
        v = corr.verification or corr.chosen.verification
        return [LandmarkEvidence(v.agreement, _local(verifier, target, corr).agreement, v.present,
                                 _margin(corr, p, 0.02 * self.diag), float(pk), float(mu), float(mv))
                for (verifier, p), pk, mu, mv in zip(self.landmarks, peak, mutual, moved)]
