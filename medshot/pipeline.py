"""One template -> landmarks and masks in any number of targets.

``OneShot`` computes the template's features once; each target then costs one feature pass, one
correspondence search and one segmenter call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from .errors import MedshotError
from .features import Backbone, FeatureMap, get_backbone, l2_normalize
from .io import Image2D, load_image, normalize_intensity
from .match import AlignOptions, Correspondence, align, match_points
from .segment import Prompt, Segmenter, box_from_points, get_segmenter
from .template import Template


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

    @property
    def landmarks_xy(self) -> np.ndarray:
        return np.array([[lm.x, lm.y] for lm in self.landmarks], float).reshape(-1, 2)


@dataclass
class _Prepared:
    """An image on the working grid with its features."""

    image: Image2D
    normalized: np.ndarray  # (H, W) in [0, 1], full resolution
    work: np.ndarray  # (h, w) in [0, 1], working grid
    scale: tuple[float, float]  # working pixels per image pixel, (y, x)
    features: FeatureMap  # on the working grid's pixel coordinates
    reduced: np.ndarray  # (c, h, w) unit descriptors for dense alignment

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        return np.stack([(xy[:, 0] + 0.5) / self.scale[1] - 0.5, (xy[:, 1] + 0.5) / self.scale[0] - 0.5], 1)

    def to_work(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        return np.stack([(xy[:, 0] + 0.5) * self.scale[1] - 0.5, (xy[:, 1] + 0.5) * self.scale[0] - 0.5], 1)


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
    align_options : AlignOptions, optional
    refine_landmarks : bool
        Re-match each landmark's descriptor locally after the dense correspondence.
    window : (low, high), optional
        Intensity window (e.g. CT HU) instead of robust percentiles; defaults to the template's.
    reduced_dims : int
        Feature dimensions kept (by PCA on the template) for dense alignment.
    context : float
        How much surrounding context the template region carries: margin around the annotations as a
        fraction of their extent (at least half that fraction of the image side).
    """

    def __init__(self, template: Template, backbone: str | Backbone = "classical",
                 segmenter: str | Segmenter = "classical", work_size: int = 256,
                 align_options: AlignOptions | None = None, refine_landmarks: bool = True,
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
        self.align_options = align_options or AlignOptions()
        self.refine_landmarks = refine_landmarks
        self.window = window if window is not None else template.window
        self.reduced_dims = reduced_dims
        self._basis: np.ndarray | None = None
        self._template = self._prepare(template.image, fit_basis=True)
        self._roi = self._template_roi()

    def _work_side(self, side: int) -> int:
        return int(np.clip(side, self.min_work_size, self.work_size))

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            self._segmenter = get_segmenter(self._segmenter_spec)  # type: ignore[arg-type]
        return self._segmenter

    # -- preparation ----------------------------------------------------------------------------

    def _prepare(self, image: Image2D, fit_basis: bool = False) -> _Prepared:
        normalized = normalize_intensity(image.array, self.window)
        H, W = normalized.shape
        f = self._work_side(max(H, W)) / max(H, W)
        h, w = max(8, int(round(H * f))), max(8, int(round(W * f)))
        work = resize(normalized, (h, w), order=1, anti_aliasing=f < 1, preserve_range=True).astype(np.float32)
        given = normalized if getattr(self.backbone, "full_resolution_input", False) else work
        fmap = self.backbone(given)
        if fmap.image_shape != given.shape:
            raise MedshotError(f"backbone '{getattr(self.backbone, 'name', '?')}' described a {fmap.image_shape} "
                               f"image but was given {given.shape}")
        if fmap.image_shape != (h, w):
            fmap = fmap.rescaled((h, w))
        # Reduce on the backbone's own grid, then resample: a log-binned ViT map has thousands of channels,
        # and bringing those to the working grid first would cost gigabytes.
        if fit_basis:
            self._basis = self._fit_basis(fmap.data)
        data = fmap.data if self._basis is None else np.tensordot(self._basis, fmap.data, axes=(1, 0))
        reduced = FeatureMap(l2_normalize(data, axis=0), fmap.stride_yx, fmap.offset_yx, fmap.image_shape)
        if not (reduced.grid_shape == (h, w) and reduced.stride_yx == (1.0, 1.0)):
            reduced = reduced.resampled((h, w))
        return _Prepared(image, normalized, work, (h / H, w / W), fmap, l2_normalize(reduced.data, axis=0))

    def _fit_basis(self, data: np.ndarray) -> np.ndarray | None:
        C = data.shape[0]
        if C <= self.reduced_dims or self.reduced_dims <= 0:
            return None
        x = data.reshape(C, -1)
        step = max(1, x.shape[1] // 20000)
        x = x[:, ::step]
        x = x - x.mean(axis=1, keepdims=True)
        u, _, _ = np.linalg.svd(x @ x.T)
        return u[:, : self.reduced_dims].T.astype(np.float32)

    def _template_roi(self) -> np.ndarray:
        """Working-grid region of the template whose correspondence matters: annotations plus context."""
        t = self._template
        h, w = t.work.shape
        pts = [t.to_work(self.template.landmarks_xy)]
        for p in self.template.prompts:
            pts += [t.to_work(p.positive), t.to_work(p.negative)]
        mask = self.template.mask
        if mask is not None:
            ys, xs = np.nonzero(mask)
            pts.append(t.to_work(np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], float)))
        pts = np.vstack(pts) if pts else np.zeros((0, 2))
        roi = np.zeros((h, w), bool)
        if len(pts) == 0:
            roi[:] = True
            return roi
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        mx = max(self.context * (x1 - x0), 0.5 * self.context * w)
        my = max(self.context * (y1 - y0), 0.5 * self.context * h)
        roi[int(max(0, y0 - my)): int(min(h, y1 + my + 1)), int(max(0, x0 - mx)): int(min(w, x1 + mx + 1))] = True
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
        corr = align(self._template.reduced, self._roi, prepared.reduced, self.align_options)
        return prepared, corr

    def localize(self, target) -> TargetResult:
        return self.run(target, landmarks=True, masks=False)

    def segment(self, target) -> TargetResult:
        return self.run(target, landmarks=False, masks=True)

    def run(self, target, landmarks: bool = True, masks: bool = True, baseline: str | None = None) -> TargetResult:
        """Landmarks and/or label map for one target (array or path).

        With ``baseline`` (``"identity"``, ``"affine"`` or ``"bspline"``) the correspondence comes from
        SimpleITK atlas registration of the same working images instead, and the template's mask and
        landmarks are carried through it unchanged (no segmenter, no descriptor refinement): the
        reference rows of every benchmark.
        """
        start = time.perf_counter()
        if baseline is None:
            prepared, corr = self.correspond(target)
        else:
            from .baselines import register

            image = self.load(target)
            normalized = normalize_intensity(image.array, self.window)
            H, W = normalized.shape
            # Registration runs at the image's own resolution, capped at the working size: upsampling a
            # small image would only slow the baseline down.
            f = min(self.work_size, max(H, W)) / max(H, W)
            h, w = max(8, int(round(H * f))), max(8, int(round(W * f)))
            work = resize(normalized, (h, w), order=1, anti_aliasing=f < 1, preserve_range=True).astype(np.float32)
            prepared = _Prepared(image, normalized, work, (h / H, w / W), None, None)  # type: ignore[arg-type]
            t_norm = self._template.normalized
            Ht, Wt = t_norm.shape
            ft = min(self.work_size, max(Ht, Wt)) / max(Ht, Wt)
            t_work = resize(t_norm, (max(8, int(round(Ht * ft))), max(8, int(round(Wt * ft)))), order=1,
                            anti_aliasing=ft < 1, preserve_range=True).astype(np.float32)
            corr = register(t_work, work, baseline)
            corr = _rescale_correspondence(corr, t_work.shape, self._template.work.shape)
        result = TargetResult(prepared.image, correspondence_score=corr.score)
        if landmarks and self.template.landmarks:
            result.landmarks = self._landmarks(prepared, corr, refine=self.refine_landmarks and baseline is None)
        if masks and (self.template.prompts or self.template.mask is not None):
            if baseline is None:
                result.label_map, result.scores = self._masks(prepared, corr)
            elif self.template.mask is not None:
                result.label_map = self._carry_mask(self.template.mask, prepared, corr).astype(np.uint8)
        result.seconds = time.perf_counter() - start
        return result

    def _landmarks(self, prepared: _Prepared, corr: Correspondence, refine: bool) -> list[LandmarkResult]:
        t = self._template
        template_xy = t.to_work(self.template.landmarks_xy)
        initial = corr.forward(template_xy)
        h, w = prepared.work.shape
        diag = float(np.hypot(h, w))
        if refine:
            m = match_points(t.features, prepared.features, template_xy, initial_xy=initial,
                             radius=self.search_radius * diag, prior_sigma=self.prior_sigma * diag,
                             patch_radius=self.patch_radius)
            xy, conf, mutual = m.xy, m.confidence, m.mutual
        else:
            xy, conf, mutual = initial, np.full(len(initial), max(0.0, corr.score)), np.ones(len(initial), bool)
        xy_img = prepared.to_image(xy)
        return [LandmarkResult(lm.name, float(p[0]), float(p[1]), float(c), bool(mu))
                for lm, p, c, mu in zip(self.template.landmarks, xy_img, conf, mutual)]

    def _masks(self, prepared: _Prepared, corr: Correspondence) -> tuple[np.ndarray, dict[int, float]]:
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
                pos = prepared.to_image(corr.forward(t.to_work(pts.positive)))
                neg = prepared.to_image(corr.forward(t.to_work(pts.negative)))
            region = None if coarse is None else coarse == label
            if region is not None and region.any():
                pos = _points_where(pos, region, inside=True)
                neg = _points_where(neg, region, inside=False)
            box = box_from_points(pos, 0.1, (H, W)) if len(pos) else None
            prompts.append(Prompt(label, pos, neg, box_xyxy=box, mask=region))
        segs = self.segmenter.segment(prepared.normalized, prompts)
        label_map = np.zeros((H, W), np.uint8 if max(labels, default=0) < 256 else np.uint16)
        scores = {}
        for s in segs:
            label_map[s.mask] = s.label
            scores[s.label] = float(s.score)
        return label_map, scores

    def _carry_mask(self, template_mask: np.ndarray, prepared: _Prepared, corr: Correspondence) -> np.ndarray:
        """Pull the template's label map through the backward correspondence onto the target's full grid."""
        t = self._template
        H, W = prepared.normalized.shape
        h, w = prepared.work.shape
        ys = (np.arange(H) + 0.5) * prepared.scale[0] - 0.5
        xs = (np.arange(W) + 0.5) * prepared.scale[1] - 0.5
        yy, xx = np.meshgrid(np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1), indexing="ij")
        by = ndimage.map_coordinates(corr.backward_yx[0], [yy, xx], order=1, mode="nearest")
        bx = ndimage.map_coordinates(corr.backward_yx[1], [yy, xx], order=1, mode="nearest")
        # working-grid template coordinates -> template image pixels
        ty = (by + 0.5) / t.scale[0] - 0.5
        tx = (bx + 0.5) / t.scale[1] - 0.5
        out = np.zeros((H, W), np.int32)
        for label in np.unique(template_mask):
            if label == 0:
                continue
            # Linear interpolation of each label's indicator gives smoother edges than nearest labels.
            p = ndimage.map_coordinates((template_mask == label).astype(np.float32), [ty, tx], order=1,
                                        mode="constant", cval=0.0)
            out[p > 0.5] = label
        return out


def _points_where(points_xy: np.ndarray, region: np.ndarray, inside: bool) -> np.ndarray:
    if len(points_xy) == 0:
        return points_xy
    H, W = region.shape
    ix = np.clip(np.round(points_xy[:, 0]).astype(int), 0, W - 1)
    iy = np.clip(np.round(points_xy[:, 1]).astype(int), 0, H - 1)
    inb = (points_xy[:, 0] >= 0) & (points_xy[:, 0] <= W - 1) & (points_xy[:, 1] >= 0) & (points_xy[:, 1] <= H - 1)
    keep = inb & (region[iy, ix] == inside)
    return points_xy[keep]


def _rescale_correspondence(corr: Correspondence, registered_shape: tuple[int, int],
                            template_work_shape: tuple[int, int]) -> Correspondence:
    """Express a correspondence computed on a differently-sized template grid in the template's working grid."""
    fy = template_work_shape[0] / registered_shape[0]
    fx = template_work_shape[1] / registered_shape[1]
    backward = np.stack([(corr.backward_yx[0] + 0.5) * fy - 0.5, (corr.backward_yx[1] + 0.5) * fx - 0.5])
    S = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
    return Correspondence(backward, corr.affine @ np.linalg.inv(S), corr.score)
