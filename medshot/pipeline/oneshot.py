"""One template -> landmarks and masks in any number of targets.

``OneShot`` computes everything about the template once (working grid, descriptors, the rotated
pose bank, the verifier); each target then costs one descriptor pass, a verified correspondence
(:mod:`medshot.match.correspond`), landmark re-matching and one segmenter call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .confidence import label_score, landmark_confidence
from .core.errors import MedshotError
from .evidence import Evidence
from .features import Backbone, FeatureMap, get_backbone, l2_normalize
from .features.classical import classical_features
from .io import Image2D, load_image, normalize_intensity
from .landmarks import FineLandmarks
from .match import match_points
from .match.correspond import Candidate, Correspondence, CorrespondOptions, TemplateSide, correspond
from .core.geometry import grid_coords, pca_basis, project, resize_features, resize_image, scale_matrix
from .match.verify import Verification
from .segment import Prompt, Segmenter, box_from_points, get_segmenter
from .template import Template

# Landmarks are matched once more at the images' own resolution where it is this much finer than the working grid.
FINE_STEP = 1.2
# A target/label whose score falls below this is flagged ``low_confidence`` for review (see README).
LOW_CONFIDENCE_SCORE = 0.5


def score_status(score: float) -> str:
    """``"ok"`` or ``"low_confidence"`` for a score or landmark confidence in [0, 1]."""
    return "ok" if score >= LOW_CONFIDENCE_SCORE else "low_confidence"


@dataclass
class LandmarkResult:
    name: str
    x: float
    y: float
    confidence: float
    mutual: bool = True


@dataclass
class TargetResult:
    """What medshot found in one target (pixels of the target image)."""

    image: Image2D
    landmarks: list[LandmarkResult] = field(default_factory=list)
    label_map: np.ndarray | None = None
    scores: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    correspondence_score: float = 0.0
    correspondence: str = ""  # which candidate correspondence was chosen
    evidence: dict = field(default_factory=dict)  # label or landmark name -> what its score was computed from

    @property
    def landmarks_xy(self) -> np.ndarray:
        return np.array([[lm.x, lm.y] for lm in self.landmarks], float).reshape(-1, 2)


@dataclass
class _Prepared:
    """An image on the working grid with its descriptors (points here are (row, col))."""

    image: Image2D
    normalized: np.ndarray  # (H, W) in [0, 1], full resolution
    work: np.ndarray  # (h, w) in [0, 1], working grid
    features: FeatureMap | None  # the backbone's own map, in working-grid pixels
    reduced: np.ndarray | None  # (c, h, w) unit descriptors on the working grid

    @property
    def to_work(self) -> np.ndarray:
        """Image pixel (row, col) -> working-grid (row, col)."""
        return scale_matrix(np.array(self.work.shape, float) / np.array(self.normalized.shape, float))

    def xy_to_work(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        f = np.array(self.work.shape, float) / np.array(self.normalized.shape, float)
        return (xy[:, ::-1] + 0.5) * f - 0.5

    def work_to_xy(self, rc: np.ndarray) -> np.ndarray:
        rc = np.asarray(rc, float).reshape(-1, 2)
        f = np.array(self.work.shape, float) / np.array(self.normalized.shape, float)
        return ((rc + 0.5) / f - 0.5)[:, ::-1]


class OneShot:
    """Find a template's landmarks and structures in new images.

    Parameters
    ----------
    template : Template
    backbone : str or Backbone
        Feature extractor (``"classical"`` needs no weights).
    segmenter : str or Segmenter
        Promptable segmenter (``"classical"`` needs no weights).
    work_size, min_work_size : int
        Longest side (pixels) of the grid images are matched on: an image's own size clipped to
        this range (small images are upsampled to ``min_work_size``, large ones reduced to ``work_size``).
    options : CorrespondOptions, optional
        Pose search, refinement, verification and deformation settings.
    refine_landmarks : bool
        Re-match each landmark's descriptors locally after the dense correspondence.
    window : (low, high), optional
        Intensity window (e.g. CT HU) instead of robust percentiles; defaults to the template's.
    reduced_dims : int
        Descriptor dimensions kept (by PCA on the template) for dense matching.
    context : float
        How much surrounding context the template region carries: margin around the annotations as a
        fraction of their extent (at least half that fraction of the image side).
    """

    def __init__(self, template: Template, backbone: str | Backbone = "classical",
                 segmenter: str | Segmenter = "classical", work_size: int = 256,
                 options: CorrespondOptions | None = None, refine_landmarks: bool = True,
                 window: tuple[float, float] | None = None, reduced_dims: int = 16,
                 backbone_options: dict | None = None, context: float = 0.1, min_work_size: int = 128):
        self.template = template
        self.context = context
        self.search_radius = 0.05  # landmark re-matching window, fraction of the diagonal
        self.prior_sigma = 0.025  # width of the Gaussian prior around the carried position, likewise
        self.patch_radius = 4.0  # working pixels: landmarks are re-matched as small patches of descriptors
        self.backbone = get_backbone(backbone, **(backbone_options or {})) if isinstance(backbone, str) else backbone
        self._segmenter_spec = segmenter
        self._segmenter: Segmenter | None = None if isinstance(segmenter, str) else segmenter
        self.work_size = int(work_size)
        self.min_work_size = int(min(min_work_size, work_size))
        self.options = options or CorrespondOptions()
        self.refine_landmarks = refine_landmarks
        self.window = window if window is not None else template.window
        self.reduced_dims = reduced_dims
        # A pixel-level backbone (the classical one) describes whatever grid it is given at that grid's
        # scale, so the coarse search describes coarse images directly and gets context-sized descriptors.
        self._pixel_level = bool(getattr(self.backbone, "pixel_level", False))
        self._basis: np.ndarray | None = None
        self._template = self._prepare(template.image, fit_basis=True)
        roi = self._template_roi()
        # Describing the template again in each candidate's frame is what makes turned structures match;
        # for a slow backbone its descriptors are resampled instead.
        self._side = TemplateSide(self._template.work, self._template.reduced, roi, self._describe_coarse,
                                  self._describe_dense if self._pixel_level else None, self.options)
        labels = {}
        if template.mask is not None:
            coords = grid_coords(np.linalg.inv(self._template.to_work), self._template.work.shape)
            work_mask = ndimage.map_coordinates(template.mask, coords, order=0, mode="nearest")
            labels = {int(k): work_mask == k for k in np.unique(template.mask) if k != 0}
        step = max(self._template.normalized.shape) / max(self._template.work.shape)  # image px per working px
        self._fine = FineLandmarks(self._template.normalized, template.landmarks_xy, step) \
            if template.landmarks and self._pixel_level and step > FINE_STEP else None
        self._evidence = Evidence(self._template.work, self._side.informative, labels,
                                  self._template.xy_to_work(template.landmarks_xy), self._side.verifier,
                                  self._side.bank.radius, self.options.verify_side, self.options.verify_sigma,
                                  self.options.verify_eps)

    def _work_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        side = int(np.clip(max(shape), self.min_work_size, self.work_size))
        f = side / max(shape)
        return max(8, int(round(shape[0] * f))), max(8, int(round(shape[1] * f)))

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            self._segmenter = get_segmenter(self._segmenter_spec)  # type: ignore[arg-type]
        return self._segmenter

    # -- descriptors ----------------------------------------------------------------------------

    def _backbone_map(self, image: np.ndarray) -> FeatureMap:
        fmap = self.backbone(image)
        if fmap.image_shape != image.shape[:2]:
            raise MedshotError(f"backbone '{getattr(self.backbone, 'name', '?')}' described a {fmap.image_shape} "
                               f"image but was given {image.shape}")
        return fmap

    def _reduce(self, fmap: FeatureMap, shape: tuple[int, int]) -> np.ndarray:
        """Unit descriptors ``(c, *shape)`` of a map described in a frame of ``shape`` pixels."""
        # Reduce on the backbone's own grid, then resample: a log-binned ViT map has thousands of channels,
        # and bringing those to the working grid first would cost gigabytes.
        reduced = FeatureMap(project(self._basis, fmap.data), fmap.stride, fmap.offset, fmap.image_shape)
        if not (reduced.grid_shape == tuple(shape) and reduced.stride == (1.0, 1.0)):
            reduced = reduced.resampled(tuple(shape))
        return l2_normalize(reduced.data, axis=0)

    def _describe_dense(self, image: np.ndarray) -> np.ndarray:
        return self._reduce(self._backbone_map(image), image.shape)

    def _describe_coarse(self, image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self._pixel_level:
            return classical_features(resize_image(image, shape))
        return resize_features(self._describe_dense(image), shape)

    def _prepare(self, image: Image2D, fit_basis: bool = False) -> _Prepared:
        normalized = normalize_intensity(image.array, self.window)
        work = resize_image(normalized, self._work_shape(normalized.shape))
        fmap = self._backbone_map(normalized if getattr(self.backbone, "full_resolution_input", False) else work)
        if fmap.image_shape != work.shape:
            fmap = fmap.rescaled(work.shape)
        if fit_basis:
            self._basis = pca_basis(fmap.data, self.reduced_dims)
        return _Prepared(image, normalized, work, fmap, self._reduce(fmap, work.shape))

    def _template_roi(self) -> np.ndarray:
        """Working-grid region of the template whose correspondence matters: annotations plus context."""
        t = self._template
        h, w = t.work.shape
        pts = [t.xy_to_work(self.template.landmarks_xy)]
        for p in self.template.prompts:
            pts += [t.xy_to_work(p.positive), t.xy_to_work(p.negative)]
        mask = self.template.mask
        if mask is not None:
            rows, cols = np.nonzero(mask)
            pts.append(t.xy_to_work(np.array([[cols.min(), rows.min()], [cols.max(), rows.max()]], float)))
        pts = np.vstack(pts) if pts else np.zeros((0, 2))
        roi = np.zeros((h, w), bool)
        if len(pts) == 0:
            roi[:] = True
            return roi
        (r0, c0), (r1, c1) = pts.min(0), pts.max(0)
        mr = max(self.context * (r1 - r0), 0.5 * self.context * h)
        mc = max(self.context * (c1 - c0), 0.5 * self.context * w)
        roi[int(max(0, r0 - mr)): int(min(h, r1 + mr + 1)), int(max(0, c0 - mc)): int(min(w, c1 + mc + 1))] = True
        return roi

    # -- per target -----------------------------------------------------------------------------

    def load(self, target: str | Path | Image2D | np.ndarray) -> Image2D:
        if isinstance(target, Image2D):
            return target
        if isinstance(target, np.ndarray):
            if target.ndim == 3:
                target = target[..., :3].mean(axis=2)
            if target.ndim != 2:
                raise MedshotError(f"expected a 2D image array, got shape {target.shape}")
            return Image2D(np.asarray(target, np.float32))
        return load_image(target)

    def correspond(self, target: str | Path | Image2D | np.ndarray) -> tuple[_Prepared, Correspondence]:
        prepared = self._prepare(self.load(target))
        coarse = None
        if self._pixel_level:
            def coarse(shape):
                return self._describe_coarse(prepared.work, shape)
        return prepared, correspond(self._side, prepared.work, prepared.reduced, coarse)

    def localize(self, target) -> TargetResult:
        return self.run(target, landmarks=True, masks=False)

    def segment(self, target) -> TargetResult:
        return self.run(target, landmarks=False, masks=True)

    def run(self, target, landmarks: bool = True, masks: bool = True, baseline: str | None = None) -> TargetResult:
        """Landmarks and/or label map for one target (array or path).

        With ``baseline`` (one of :data:`medshot.baselines.BASELINES`) the correspondence comes from
        atlas registration of the same working images instead, and the template's mask and
        landmarks are carried through it unchanged (no segmenter, no descriptor refinement): the
        reference rows of every benchmark.
        """
        start = time.perf_counter()
        if baseline is None:
            prepared, corr = self.correspond(target)
        else:
            prepared, corr = self._baseline(target, baseline)
        result = TargetResult(prepared.image, correspondence_score=corr.score, correspondence=corr.chosen.name)
        if landmarks and self.template.landmarks:
            refine = self.refine_landmarks and baseline is None
            result.landmarks, evidence = self._landmarks(prepared, corr, refine)
            result.evidence.update(evidence)
        if masks and (self.template.prompts or self.template.mask is not None):
            if baseline is None:
                result.label_map, result.scores, evidence = self._masks(prepared, corr)
                result.evidence.update(evidence)
            elif self.template.mask is not None:
                carried = self._carry_mask(self.template.mask, prepared, corr)
                result.label_map = carried.astype(np.uint8 if carried.max(initial=0) < 256 else np.uint16)
        result.seconds = time.perf_counter() - start
        return result

    def _baseline(self, target, baseline: str) -> tuple[_Prepared, Correspondence]:
        from .baselines import register

        image = self.load(target)
        normalized = normalize_intensity(image.array, self.window)
        # Registration runs at the image's own resolution, capped at the working size: upsampling a
        # small image would only slow the baseline down.
        def own(shape):
            f = min(self.work_size, max(shape)) / max(shape)
            return max(8, int(round(shape[0] * f))), max(8, int(round(shape[1] * f)))

        work = resize_image(normalized, own(normalized.shape))
        t_norm = self._template.normalized
        t_work = resize_image(t_norm, own(t_norm.shape))
        backward, matrix = register(t_work, work, baseline)
        # registered template grid -> the template's working grid
        S = scale_matrix(np.array(self._template.work.shape, float) / np.array(t_work.shape, float))
        backward = np.stack([(backward[k] + 0.5) * S[k, k] - 0.5 for k in range(2)])
        matrix = matrix @ np.linalg.inv(S)
        chosen = Candidate(baseline, matrix, Verification(0.0, 0.0, 0.0))
        return _Prepared(image, normalized, work, None, None), Correspondence(backward, matrix, chosen, [chosen])

    def _warped_template_map(self, prepared: _Prepared, corr: Correspondence) -> FeatureMap:
        """The template seen through the correspondence: described on the target's working grid."""
        data, _ = self._side.at(corr.backward)
        return FeatureMap(data, (1.0, 1.0), (0.0, 0.0), prepared.work.shape)

    def _landmarks(self, prepared: _Prepared, corr: Correspondence,
                   refine: bool) -> tuple[list[LandmarkResult], dict[str, object]]:
        t = self._template
        carried = corr.forward(t.xy_to_work(self.template.landmarks_xy))  # target working (row, col)
        h, w = prepared.work.shape
        diag = float(np.hypot(h, w))
        if refine:
            start_xy = carried[:, ::-1]
            if _upright(corr.matrix):
                # Nearly upright and of similar size: the template's own (full) descriptors at its own points
                # are exact, where a resampled template would be slightly blurred.
                source, target_map = t.features, prepared.features
                query_xy = t.xy_to_work(self.template.landmarks_xy)[:, ::-1]
            else:  # descriptors are not rotation-invariant: describe the template in the target's frame
                source, query_xy = self._warped_template_map(prepared, corr), start_xy
                target_map = FeatureMap(prepared.reduced, (1.0, 1.0), (0.0, 0.0), prepared.work.shape)
            m = match_points(source, target_map, query_xy, initial_xy=start_xy,
                             radius=self.search_radius * diag, prior_sigma=self.prior_sigma * diag,
                             patch_radius=self.patch_radius)
            rc, peak, mutual = m.xy[:, ::-1], m.confidence, m.mutual
            moved = np.hypot(*(rc - carried).T) / (self.search_radius * diag)
            evidence = self._evidence.for_landmarks(prepared.work, corr, peak, mutual, moved)
            conf = [landmark_confidence(e) for e in evidence]
        else:
            rc, conf, mutual = carried, np.full(len(carried), np.nan), np.ones(len(carried), bool)
            evidence = []
        xy_img = prepared.work_to_xy(rc)
        step = max(prepared.normalized.shape) / max(prepared.work.shape)
        if refine and self._fine is not None and step > FINE_STEP:
            image_matrix = np.linalg.inv(prepared.to_work) @ corr.matrix @ t.to_work  # template -> target pixels
            if _upright(image_matrix):
                xy_img = self._fine.refine(prepared.normalized, xy_img)
        return ([LandmarkResult(lm.name, float(p[0]), float(p[1]), float(c), bool(mu))
                 for lm, p, c, mu in zip(self.template.landmarks, xy_img, conf, mutual)],
                {lm.name: e for lm, e in zip(self.template.landmarks, evidence)})

    def _masks(self, prepared: _Prepared, corr: Correspondence) -> tuple[np.ndarray, dict[int, float], dict]:
        t = self._template
        H, W = prepared.normalized.shape
        template_mask = self.template.mask
        labels = [p.label for p in self.template.prompts] or sorted(self.template.labels)
        coarse = None
        if template_mask is not None:
            coarse = self._carry_mask(template_mask, prepared, corr)
        prompts = []
        for label in labels:
            pts = next((p for p in self.template.prompts if p.label == label), None)
            pos = neg = np.zeros((0, 2))
            if pts is not None:
                pos = prepared.work_to_xy(corr.forward(t.xy_to_work(pts.positive)))
                neg = prepared.work_to_xy(corr.forward(t.xy_to_work(pts.negative)))
            region = None if coarse is None else coarse == label
            if region is not None and region.any():
                pos = _points_where(pos, region, inside=True)
                neg = _points_where(neg, region, inside=False)
            box = box_from_points(pos, 0.1, (H, W)) if len(pos) else None
            prompts.append(Prompt(label, pos, neg, box_xyxy=box, mask=region))
        segs = self.segmenter.segment(prepared.normalized, prompts)
        label_map = np.zeros((H, W), np.uint8 if max(labels, default=0) < 256 else np.uint16)
        for s in segs:
            label_map[s.mask] = s.label
        evidence = self._evidence.for_labels(prepared.work, corr)
        # A label the template has no mask for (prompts only) keeps the segmenter's own score.
        scores = {s.label: label_score(evidence[s.label]) if s.label in evidence else float(s.score) for s in segs}
        return label_map, scores, evidence

    def _carry_mask(self, template_mask: np.ndarray, prepared: _Prepared, corr: Correspondence) -> np.ndarray:
        """Pull the template's label map through the backward correspondence onto the target's full grid."""
        t = self._template
        H, W = prepared.normalized.shape
        h, w = prepared.work.shape
        # target image pixel -> target working -> (backward) template working -> template image pixel
        at_work = np.clip(grid_coords(prepared.to_work, (H, W)), 0, np.array([h - 1, w - 1])[:, None, None])
        back = np.stack([ndimage.map_coordinates(c, at_work, order=1, mode="nearest") for c in corr.backward])
        to_image = np.linalg.inv(t.to_work)
        src = np.stack([back[0] * to_image[0, 0] + to_image[0, 2], back[1] * to_image[1, 1] + to_image[1, 2]])
        out = np.zeros((H, W), np.int32)
        for label in np.unique(template_mask):
            if label == 0:
                continue
            # Linear interpolation of each label's indicator gives smoother edges than nearest labels.
            p = ndimage.map_coordinates((template_mask == label).astype(np.float32), src, order=1,
                                        mode="constant", cval=0.0)
            out[p > 0.5] = label
        return out


def _upright(matrix: np.ndarray, max_turn_deg: float = 20.0, max_scale_change: float = 1.25) -> bool:
    """Whether an affine keeps the template nearly upright and of nearly its own size."""
    sv = np.linalg.svd(matrix[:2, :2], compute_uv=False)
    turn = np.degrees(np.arctan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))
    return abs(turn) <= max_turn_deg and sv[0] <= max_scale_change and sv[1] >= 1 / max_scale_change


def _points_where(points_xy: np.ndarray, region: np.ndarray, inside: bool) -> np.ndarray:
    if len(points_xy) == 0:
        return points_xy
    H, W = region.shape
    ix = np.clip(np.round(points_xy[:, 0]).astype(int), 0, W - 1)
    iy = np.clip(np.round(points_xy[:, 1]).astype(int), 0, H - 1)
    inb = (points_xy[:, 0] >= 0) & (points_xy[:, 0] <= W - 1) & (points_xy[:, 1] >= 0) & (points_xy[:, 1] <= H - 1)
    keep = inb & (region[iy, ix] == inside)
    return points_xy[keep]
