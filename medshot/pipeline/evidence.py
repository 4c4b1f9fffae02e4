"""The measurements behind each label's score and each landmark's confidence (see :mod:`medshot.pipeline.confidence`).

Built once per template (one small verifier per label and per landmark), then asked about every
target's correspondence and results. Written for any dimension; points are array indices on the
working grids.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import apply_affine, grid_coords
from ..core.labels import dice, equivalent_radius
from ..match.correspond import Correspondence
from ..match.verify import Verifier
from .confidence import LabelEvidence, LandmarkEvidence


def _margin(corr: Correspondence, point: np.ndarray, radius: float) -> float:
    """Chosen verification minus the best one among candidates that put ``point`` more than ``radius`` away."""
    chosen = corr.chosen
    at = apply_affine(chosen.matrix, point)[0]
    scale = _scale(chosen.matrix)
    rivals = [c.verification.score for c in corr.candidates
              if np.linalg.norm(apply_affine(c.matrix, point)[0] - at) > radius * scale]
    return chosen.verification.score - (max(rivals) if rivals else 0.0)


def _scale(matrix: np.ndarray) -> float:
    """Mean scale of an affine's linear part (target pixels per template pixel)."""
    d = matrix.shape[0] - 1
    return float(abs(np.linalg.det(matrix[:d, :d])) ** (1 / d))


def _contrast(image: np.ndarray, inside: np.ndarray, around: np.ndarray) -> float:
    """Mean intensity inside a region minus in a ring around it (0 when either is empty)."""
    if not inside.any() or not around.any():
        return 0.0
    return float(image[inside].mean() - image[around].mean())


def _placed(verifier: Verifier, corr: Correspondence) -> np.ndarray:
    """Where the verifier's template grid lies in the target under the final correspondence."""
    if corr.verified_at is not None and corr.verified_at.shape[1:] == verifier.shape:
        return corr.verified_at
    return grid_coords(corr.matrix @ np.linalg.inv(verifier.to_level), verifier.shape)


def _local(verifier: Verifier, target: np.ndarray, corr: Correspondence, moved: np.ndarray | None = None):
    """A local verifier's view of the final correspondence (its placement moved by ``moved`` target pixels)."""
    return verifier.score_coords(target, _moved(_placed(verifier, corr), moved))


def _moved(at: np.ndarray, moved: np.ndarray | None) -> np.ndarray:
    """Placement coordinates ``(ndim, ...)`` translated by ``moved`` ``(ndim,)`` (None: as they are)."""
    if moved is None:
        return at
    return at + np.asarray(moved, float).reshape((at.shape[0],) + (1,) * (at.ndim - 1))


def _sharpness(verifier: Verifier, target: np.ndarray, corr: Correspondence, shift: float,
               moved: np.ndarray | None = None) -> float:
    """Agreement in place minus its mean ``shift`` pixels away (both ways along each axis).

    A structure that is really there agrees much better in place than next to it; in an image where it
    is absent, or where nothing but noise drives the match, agreement is about as good anywhere.
    """
    at = _moved(_placed(verifier, corr), moved)
    d = at.shape[0]
    here = verifier.score_coords(target, at).agreement
    around = [verifier.score_coords(target, at + (sign * shift * np.eye(d)[axis]).reshape((d,) + (1,) * d)).agreement
              for axis in range(d) for sign in (1, -1)]
    return float(here - np.mean(around))


class Evidence:
    """Per-label and per-landmark verifiers of one template.

    Parameters
    ----------
    image : ndarray (m, n[, p])
        The template's working image in [0, 1].
    informative : ndarray (m, n[, p])
        Informativeness weight per pixel, in [0, 1].
    labels : dict of int -> ndarray (m, n[, p]) bool
        Each label's mask on the working grid.
    landmarks : ndarray (N, ndim)
        Landmarks on the working grid.
    verifier : Verifier
        The correspondence's verifier (whole region of interest).
    roi_radius : float
        Working pixels: radius of the region of interest.
    side, sigma, eps :
        Settings of the per-label and per-landmark verifiers (:class:`~medshot.match.verify.Verifier`).
    """

    def __init__(self, image: np.ndarray, informative: np.ndarray, labels: dict[int, np.ndarray],
                 landmarks: np.ndarray, verifier: Verifier, roi_radius: float, side: int = 128, sigma: float = 0.5,
                 eps: float = 1.0):
        self.verifier = verifier
        self.roi_radius = roi_radius
        weight = 0.1 + 0.9 * informative
        d = image.ndim
        self.diag = float(np.linalg.norm(image.shape))
        self.labels: dict[int, tuple[Verifier, np.ndarray, float, float]] = {}
        self.regions = labels
        self.contrast: dict[int, float] = {}
        for label, region in labels.items():
            area = float(region.sum())
            if area == 0:
                continue
            radius = equivalent_radius(area, d)
            band = ndimage.distance_transform_edt(~region) <= max(2.0, 0.5 * radius)
            self.contrast[label] = _contrast(image, region, band & ~region)
            center = np.argwhere(region).mean(axis=0)
            self.labels[label] = (Verifier(image, band * weight, side, sigma, eps), center, radius,
                                  np.log10(area / image.size))
        grid = np.indices(image.shape)
        self.landmarks: list[tuple[Verifier, np.ndarray]] = []
        for p in np.asarray(landmarks, float).reshape(-1, d):
            disc = ((grid - p.reshape((d,) + (1,) * d)) ** 2).sum(0) <= (0.05 * self.diag) ** 2
            self.landmarks.append((Verifier(image, disc * weight, side, sigma, eps), p))

    def for_labels(self, target: np.ndarray, corr: Correspondence,
                   final: dict[int, np.ndarray] | None = None) -> dict[int, LabelEvidence]:
        """Evidence per label of the template's mask.

        ``final`` holds each label's region as the segmenter returned it, on the target's working grid
        (default: the region the correspondence carries): the score is about what the user gets.
        """
        v = corr.verification or corr.chosen.verification
        scale = _scale(corr.matrix)
        sharpness = _sharpness(self.verifier, target, corr, 0.25 * self.roi_radius * scale)
        out = {}
        for label, (verifier, center, radius, share) in self.labels.items():
            region = self.regions[label].astype(np.float32)
            carried = _above_half(ndimage.map_coordinates(region, corr.backward, order=1))
            result = carried if final is None else final.get(label, np.zeros_like(carried))
            stability = float(np.mean([dice(result, _above_half(ndimage.map_coordinates(region, f, order=1)))
                                       for f in corr.alternatives])) if corr.alternatives else 1.0
            ring = (ndimage.distance_transform_edt(~result) <= max(2.0, 0.5 * radius)) & ~result
            difference = abs(_contrast(target, result, ring) - self.contrast[label])
            out[label] = LabelEvidence(v.agreement, _local(verifier, target, corr).agreement, v.present,
                                       _margin(corr, center, radius), stability,
                                       float(np.exp(-difference / 0.1)), sharpness,
                                       _sharpness(verifier, target, corr, max(2.0, radius * scale)), share,
                                       float(result.sum()) / max(1.0, float(carried.sum())),
                                       dice(result, carried) if result.any() or carried.any() else 0.0)
        return out

    def for_landmarks(self, target: np.ndarray, corr: Correspondence, peak: np.ndarray, mutual: np.ndarray,
                      moved: np.ndarray, shifts: np.ndarray | None = None) -> list[LandmarkEvidence]:
        """Evidence per landmark at its final position.

        ``moved`` is the re-matching shift as a fraction of the search radius; ``shifts`` ``(N, ndim)``
        how far (target working pixels) each written point lies from where the correspondence put it.
        """
        v = corr.verification or corr.chosen.verification
        scale = _scale(corr.matrix)
        sharpness = _sharpness(self.verifier, target, corr, 0.25 * self.roi_radius * scale)
        shifts = np.zeros((len(self.landmarks), target.ndim)) if shifts is None else shifts
        return [LandmarkEvidence(v.agreement, _local(verifier, target, corr, sh).agreement, v.present,
                                 _margin(corr, p, 0.02 * self.diag), float(pk), float(mu), float(mv), sharpness,
                                 _sharpness(verifier, target, corr, 0.02 * self.diag * scale, sh))
                for (verifier, p), pk, mu, mv, sh in zip(self.landmarks, peak, mutual, moved, shifts)]


def _above_half(values: np.ndarray) -> np.ndarray:
    """Where an interpolated indicator exceeds one half (or half its peak, for a region thinner than a pixel)."""
    top = float(values.max()) if values.size else 0.0
    return values > 0.5 if top > 0.5 or top <= 0.0 else values >= 0.5 * top
