"""A verified correspondence between a template and a target.

1. **Candidates.** No motion (the template's grid laid on the target's), a plain intensity-based
   affine (mutual information), and the best distinct placements of the full-pose descriptor
   search (:mod:`.search`), each refined by robust affine fits to block matches (:mod:`.refine`).
2. **Verification.** Every candidate is scored by one criterion that none of the searches
   optimised (:mod:`.verify`); the best is kept. A descriptor search that locks onto the wrong
   thing therefore cannot do worse than not moving at all, unless the evidence says so.
3. **Deformation** of the chosen affine, by descriptor block matching or by demons.

The :class:`Correspondence` keeps every candidate's verification: how much the candidates agree
is part of how confident the result is.

Written once for images of any dimension; coordinates are array order on the two working grids
(see :mod:`medshot.core.geometry`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..core.geometry import apply_affine, grid_coords, informativeness, resize_features, resize_image, scale_matrix
from .refine import DescribeDense, RefineOptions, TargetLevel, TemplateSampler, deform, plausible, refine_affine
from .rotations import turn_deg
from .search import Describe, PoseBank, SearchOptions, build_bank, search
from .verify import Verification, Verifier


@dataclass
class CorrespondOptions:
    """What :func:`correspond` tries and how (defaults chosen on the tune half of the development data)."""

    search: SearchOptions = field(default_factory=SearchOptions)
    refine: RefineOptions = field(default_factory=RefineOptions)
    verify_side: int = 128
    verify_sigma: float = 0.5  # gradient smoothing of the verifier, pixels of its grid
    verify_eps: float = 1.0  # NGF edge-noise level, times the template's median gradient magnitude
    # In-plane orientation is standardised in most acquisitions: a candidate turned by a half turn must
    # verify this much (fraction) better than an upright one to be chosen; a quarter turn half as much.
    turn_penalty: float = 0.1
    # Describe the template again in each candidate's frame (descriptors are not rotation-invariant, and
    # 2D candidates turn by up to a half turn: True), or resample its descriptors (False). None: only where
    # the refinement grids are at most a third coarser than the working grid. For candidates that turn
    # little (volumes), the template's own descriptors keep the detail of its working grid that a
    # description on a much coarser refinement grid loses; at about the working grid's scale, describing
    # the resampled template as the target is described compares like with like.
    redescribe: bool | None = True
    # A region of interest holding less than this share of the template's informative content (a landmark
    # in a flat organ, annotated without a mask) cannot anchor a correspondence: it is grown until it does.
    # Half the smallest share among the 2D development templates (0.106, Drishti-GS; python
    # benchmarks/roi_content.py), so their regions stay as they were.
    min_informative: float = 0.05
    # Verification scores within this fraction of each other are a tie, which the simpler answer wins (no
    # motion over a placement, the affine over a deformation): run on itself, pydicom's JPEG2000.dcm,
    # liver_1frame.dcm and colour-bar test images had placements beside no motion, and deformations of
    # it, verify up to 0.13 % better from interpolation noise alone (bars slid along themselves by 55 px).
    tie: float = 0.005
    identity: bool = True  # no motion is always a candidate
    intensity: bool = True  # so is a mutual-information affine
    intensity_side: int = 128  # grid (longest side) of the intensity affine and of demons
    # "auto" runs demons and descriptor block matching and keeps whichever verifies best (or the affine)
    deformation: str = "auto"  # "auto", "demons", "features" or "none"


@dataclass
class Candidate:
    """One candidate affine (template working -> target working, array order) and its verification."""

    name: str
    matrix: np.ndarray
    verification: Verification


@dataclass
class Correspondence:
    """Where each target working pixel comes from in the template, and how the choice was made.

    Attributes
    ----------
    backward : ndarray (ndim, M, N[, P])
        For each target working pixel, its template working position (array order).
    matrix : ndarray (ndim + 1, ndim + 1)
        The chosen affine, template working -> target working (array order, homogeneous).
    chosen : Candidate
    candidates : list of Candidate
        Every candidate that was verified, best first.
    verification : Verification or None
        The final correspondence's (deformation included) verification.
    verified_at : ndarray (ndim, m, n[, p]) or None
        Where each pixel of the verifier's template grid lies in the target (working pixels).
    alternatives : list of ndarray (ndim, M, N[, P])
        Backward fields of the other refinements of the chosen affine (the affine alone, the
        deformation not chosen): where they disagree with ``backward``, the result is uncertain.
    level : TargetLevel or None
        The target's refinement grid the affine was refined on (a correspondence without deformation),
        so that :func:`deform_verified` does not describe the target there again.
    """

    backward: np.ndarray
    matrix: np.ndarray
    chosen: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    verification: Verification | None = None
    verified_at: np.ndarray | None = None
    alternatives: list[np.ndarray] = field(default_factory=list)
    level: TargetLevel | None = field(default=None, repr=False, compare=False)

    @property
    def score(self) -> float:
        return (self.verification or self.chosen.verification).score

    def forward(self, points: np.ndarray) -> np.ndarray:
        """Template working points ``(N, ndim)`` -> target working points, inverting the backward map."""
        return invert_field(self.backward, points, apply_affine(self.matrix, points))


def invert_field(backward: np.ndarray, points: np.ndarray, guess: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Solve ``backward(t) = p`` for every point by damped Newton steps from ``guess`` (all ``(N, ndim)``).

    ``backward`` is a field ``(ndim, M, N[, P])``; its Jacobian is taken by unit finite differences.
    """
    d = backward.shape[0]
    p = np.asarray(points, np.float64).reshape(-1, d)
    t = np.asarray(guess, np.float64).reshape(-1, d).copy()
    if len(p) == 0:
        return t
    hi = np.array(backward.shape[1:], float) - 1

    def at(q):
        q = np.clip(q, 0, hi)
        return np.stack([ndimage.map_coordinates(c, q.T, order=1, mode="nearest") for c in backward], 1)

    for _ in range(iterations):
        f = at(t)
        r = p - f
        if np.all(np.linalg.norm(r, axis=1) < 1e-3):
            break
        J = np.stack([at(t + e) - f for e in np.eye(d)], axis=2)  # (N, outputs, inputs)
        ok = np.abs(np.linalg.det(J)) > 1e-9
        step = np.zeros_like(t)
        if ok.any():
            step[ok] = np.linalg.solve(J[ok], r[ok][..., None])[..., 0]
        t = t + np.clip(step, -20, 20)
    return t


def region_box(roi: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...],
               margin: float = 0.25) -> tuple[slice, ...]:
    """Box of a target grid of ``shape`` around where ``matrix`` puts the template's ``roi``, grown by ``margin``."""
    where = np.argwhere(roi)
    lo, hi = where.min(0), where.max(0)
    corners = np.array(list(itertools.product(*zip(lo, hi))), float)
    mapped = apply_affine(matrix, corners)
    a, b = mapped.min(0), mapped.max(0)
    grow = margin * (b - a) + 8
    a, b = np.maximum(np.floor(a - grow), 0), np.minimum(np.ceil(b + grow) + 1, shape)
    if np.any(b - a < 16):  # off the target or degenerate: the whole grid
        return tuple(slice(0, n) for n in shape)
    return tuple(slice(int(x), int(y)) for x, y in zip(a, b))


def turn(matrix: np.ndarray) -> float:
    """How far an affine's linear part turns (radians)."""
    d = matrix.shape[0] - 1
    return float(np.deg2rad(turn_deg(matrix[:d, :d])))


class TemplateSide:
    """Everything about the template that every target reuses: computed once.

    Parameters
    ----------
    image : ndarray (m, n[, p])
        The template on its working grid, in [0, 1].
    features : ndarray (C, m, n[, p])
        Its unit descriptors on that grid.
    roi : ndarray (m, n[, p]) bool
        The region whose correspondence matters (annotations and some context).
    describe_coarse : callable
        Descriptors of an image at the coarse search level (see :mod:`.search`).
    describe : callable, optional
        Dense descriptors of an image on its own grid. Given (and as ``options.redescribe`` says), the
        template is resampled into each candidate's frame and described again there; else its
        descriptors are resampled.
    """

    def __init__(self, image: np.ndarray, features: np.ndarray, roi: np.ndarray, describe_coarse: Describe,
                 describe: DescribeDense | None = None, options: CorrespondOptions | None = None):
        self.options = options or CorrespondOptions()
        self.image = np.asarray(image, np.float32)
        self.features = features
        self.informative = informativeness(features)
        self.roi = anchored_roi(np.asarray(roi, bool), self.informative, self.options.min_informative)
        self.weight = self.roi * (0.1 + 0.9 * self.informative)
        self.bank: PoseBank = build_bank(self.image, self.roi, describe_coarse, self.options.search)
        self.verifier = Verifier(self.image, self.weight, self.options.verify_side, self.options.verify_sigma,
                                 self.options.verify_eps)
        redescribe = self.options.redescribe
        if redescribe is None:
            refine = self.options.refine
            redescribe = 0.75 * max(self.image.shape) <= min(refine.affine_side, refine.deform_side)
        self.describe = describe if redescribe else None
        self.at = TemplateSampler(self.image, self.roi, features, self.describe)


def anchored_roi(roi: np.ndarray, informative: np.ndarray, share: float) -> np.ndarray:
    """``roi`` grown (its box, half its extent each way per step) until it holds ``share`` of ``informative``'s sum."""
    need = share * float(informative.sum())
    shape = np.array(roi.shape)
    while float(informative[roi].sum()) < need and not roi.all():
        where = np.argwhere(roi)
        lo, hi = (where.min(0), where.max(0) + 1) if len(where) else (shape // 2, shape // 2 + 1)
        grow = np.maximum(1, (hi - lo) // 2)
        lo, hi = np.maximum(lo - grow, 0), np.minimum(hi + grow, shape)
        roi = np.zeros(roi.shape, bool)
        roi[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return roi


def correspond(template: TemplateSide, target: np.ndarray, target_features: np.ndarray,
               describe_target: Callable[[tuple[int, ...]], np.ndarray] | None = None,
               initial: np.ndarray | None = None, deformable: bool = True) -> Correspondence:
    """The verified correspondence from ``template`` to a target on its working grid.

    Parameters
    ----------
    target : ndarray (M, N[, P])
        The target on its working grid, in [0, 1].
    target_features : ndarray (C, M, N[, P])
        Its unit descriptors (same dimensions as the template's).
    describe_target : callable, optional
        The target's descriptors on a coarse grid of a given shape, for the pose search (the same
        descriptor function the template's bank was made with); by default ``target_features``
        resampled.
    initial : ndarray (ndim + 1, ndim + 1), optional
        A placement found already (template working -> target working, e.g. by a coarser stage): it
        is refined and verified alone, with no search and no other candidate.
    deformable : bool
        Deform the chosen affine (``options.deformation``), or keep it.
    """
    options = template.options
    verify = template.verifier
    candidates: list[Candidate] = []

    def add(name: str, matrix: np.ndarray) -> None:
        if plausible(matrix, scale_range=(0.1, 10.0)):
            candidates.append(Candidate(name, matrix, verify(target, matrix)))

    no_motion = scale_matrix(np.array(target.shape, float) / np.array(template.image.shape, float))
    if options.identity and initial is None:
        add("identity", no_motion)
    if options.intensity and initial is None:
        from .intensity import intensity_affine

        try:
            add("intensity affine", intensity_affine(template.image, target, side=options.intensity_side))
        except RuntimeError:  # SimpleITK refuses degenerate inputs (a volume of two slices): one candidate fewer
            pass
    on_level = _describe_on_level(template, target, target_features)
    level = TargetLevel(target.shape, options.refine.affine_side, on_level)
    if describe_target is None:
        def describe_target(shape):
            return resize_features(target_features, shape)
    if initial is not None:
        add("placement", refine_affine(template.at, level, initial, options.refine))
    else:
        for i, pose in enumerate(search(template.bank, target.shape, describe_target, options.search)):
            add(f"placement {i + 1} ({pose.angle:+.0f} deg, x{pose.scale:.2f})",
                refine_affine(template.at, level, pose.matrix, options.refine))
    if not candidates:  # every candidate implausible: fall back to the given placement or to no motion
        M = no_motion if initial is None else initial
        candidates.append(Candidate("identity" if initial is None else "placement", M, verify(target, M)))
    def ranked(c: Candidate) -> float:
        return c.verification.score * (1 - options.turn_penalty * (1 - np.cos(turn(c.matrix))) / 2)

    candidates.sort(key=lambda c: -ranked(c))
    still = next((c for c in candidates if c.name == "identity"), None)
    if still is not None and ranked(still) >= ranked(candidates[0]) - options.tie * abs(ranked(candidates[0])):
        candidates.remove(still)  # a tie with no motion: nothing says the template moved
        candidates.insert(0, still)
    chosen = candidates[0]
    affine_only = Correspondence(grid_coords(np.linalg.inv(chosen.matrix), target.shape), chosen.matrix, chosen,
                                 candidates, chosen.verification,
                                 grid_coords(chosen.matrix @ np.linalg.inv(verify.to_level), verify.shape), level=level)
    return deform_verified(template, target, target_features, affine_only, level) if deformable else affine_only


def _describe_on_level(template: TemplateSide, target: np.ndarray,
                       target_features: np.ndarray) -> Callable[[tuple[int, ...]], np.ndarray]:
    """The target's descriptors on a refinement grid of a given shape, as the template is seen there."""
    if template.describe is not None:  # described again at each grid, the target as the template
        describe = template.describe

        def on_level(shape):
            return describe(resize_image(target, shape))
    else:
        def on_level(shape):
            return resize_features(target_features, shape)
    return on_level


def deform_verified(template: TemplateSide, target: np.ndarray, target_features: np.ndarray,
                    affine_only: Correspondence, level: TargetLevel | None = None) -> Correspondence:
    """``affine_only`` deformed (``options.deformation``), or kept where no deformation verifies better.

    Parameters are those of :func:`correspond`; ``affine_only`` is a correspondence it returned with
    ``deformable=False`` on the same target, ``level`` the refinement grid it used (by default the one it
    keeps, ``affine_only.level``; made again where it has none).
    """
    options = template.options
    level = affine_only.level if level is None else level
    verify = template.verifier
    chosen, candidates = affine_only.chosen, affine_only.candidates
    on_level = _describe_on_level(template, target, target_features)
    methods = {"auto": ("demons", "features"), "none": ()}.get(options.deformation, (options.deformation,))
    best = affine_only
    tried = [affine_only]
    d = target.ndim
    level_points = grid_coords(np.linalg.inv(verify.to_level), verify.shape).reshape(d, -1).T
    for method in methods:
        if method == "features":
            if level is None or options.refine.deform_side != options.refine.affine_side:
                level = TargetLevel(target.shape, options.refine.deform_side, on_level)
            backward = deform(template.at, level, chosen.matrix, options.refine, target.shape)
        elif method == "demons":
            from .intensity import demons_backward

            box = region_box(template.roi, chosen.matrix, target.shape)
            try:
                backward = demons_backward(template.image, target, chosen.matrix, options.intensity_side, box)
            except RuntimeError:  # as for the intensity affine: no demons field, the other deformation stands
                continue
        else:
            raise ValueError(f"unknown deformation '{method}' (auto, demons, features or none)")
        # A deformation answers to the same criterion as the candidates: one that makes the target's edges
        # agree less with the template's (chasing speckle or noise) loses to the affine.
        deformed = Correspondence(backward, chosen.matrix, chosen, candidates)
        deformed.verified_at = deformed.forward(level_points).T.reshape((d, *verify.shape))
        deformed.verification = verify.score_coords(target, deformed.verified_at)
        tried.append(deformed)
        if deformed.verification.score > best.score + options.tie * abs(best.score):
            best = deformed
    best.alternatives = [c.backward for c in tried if c is not best]
    best.level = None  # its work is done; the result should not hold the target's descriptors twice
    return best
