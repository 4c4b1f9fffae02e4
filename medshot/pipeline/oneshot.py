"""One template -> landmarks and label maps in any number of targets: 2D images and volumes alike.

``OneShot`` computes everything about the template once (working grids, descriptors, the pose
bank, the verifiers); each target then costs one descriptor pass per stage, a verified
correspondence (:mod:`medshot.match.correspond`), landmark re-matching and one segmenter call.

A 2D image is matched in one stage on its own pixels. A volume is matched on near-isotropic voxels
of one physical size, in two stages when its annotations are small in its field of view (the
whole volumes first, then boxes around the annotations; :mod:`medshot.pipeline.grids`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..core.geometry import apply_affine
from ..core.intensity import apply_range, check_window, intensity_range
from ..data.image import Image, from_array
from ..data.read import read_image
from ..data.template import Template
from ..features import Backbone, get_backbone
from ..match.correspond import Candidate, Correspondence, CorrespondOptions, TemplateSide, correspond, deform_verified
from ..match.points import match_points
from ..match.verify import Verification
from ..segment import Prompt, Segmenter, box_from_points, check_segmenter, get_segmenter
from .carry import carry_labels, carry_points, labels_on_grid, points_where
from .confidence import mask_score, point_score
from .describe import Descriptors
from .evidence import Evidence
from .fine import choose_on_fine_stage
from .grids import VolumeStages, WorkGrid, capped_spacing, planar_grid, spaced_grid
from .landmarks import FineLandmarks, unit_map, upright
from .options import default_options
from .result import LandmarkResult, TargetResult
from .stage import Prepared, Stage

# Landmarks are matched once more at the images' own resolution where it is this much finer than the working grid.
FINE_STEP = 1.2


class OneShot:
    """Find a template's landmarks and structures in new images or volumes.

    Parameters
    ----------
    template : Template or list of Template
        Several templates give an :class:`~medshot.pipeline.ensemble.Ensemble` (results fused).
    backbone : str or Backbone
        Feature extractor (``"classical"`` needs no weights; a 2D backbone describes volumes slice by slice).
    segmenter : str or Segmenter
        Promptable segmenter (``"classical"``, the carried label map, needs no weights).
    work_size, min_work_size : int
        2D: longest side (pixels) of the grid images are matched on, an image's own size clipped to
        this range.
    options : CorrespondOptions, optional
        Pose search, refinement, verification and deformation settings (defaults per dimension).
    refine_landmarks : bool, optional
        Move each landmark to where its descriptors re-match locally after the dense correspondence
        (default: 2D yes, volumes no). The re-matching runs either way: how distinct and mutual its
        peak is goes into the landmark's confidence.
    window : (low, high), optional
        Intensity window (e.g. CT HU) instead of robust percentiles; defaults to the template's.
    reduced_dims : int, optional
        Descriptor dimensions kept (by PCA on the template) for dense matching (default 16 in 2D, 24 in 3D).
    context : float
        2D: margin around the annotations as a fraction of their extent (at least half that
        fraction of the image side) that the template's region of interest carries.
    work_spacing : float, optional
        Volumes: voxel size (mm) of the fine stage (default: automatic).
    max_work_side, fine_voxels, max_work_voxels, max_carry_voxels : int
        Volumes: the template's coarse grid's longest side, the fine stage's voxel budget, the cap on a
        whole target's coarse grid (a larger target is matched at a coarser spacing), the cap on the
        grid a label map is carried on at once.
    """

    # What ``OneShot([t1, t2, ...])`` builds: pipeline/ensemble.py sets it to its Ensemble (it imports
    # this module, so importing it from here would make an import cycle).
    several: type | None = None

    def __new__(cls, template=None, *args, **kwargs):
        if isinstance(template, (list, tuple)) and len(template) != 1:
            return cls.several(template, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, template: Template, backbone: str | Backbone = "classical",
                 segmenter: str | Segmenter = "classical", work_size: int = 256, min_work_size: int = 128,
                 options: CorrespondOptions | None = None, refine_landmarks: bool | None = None,
                 window: tuple[float, float] | None = None, reduced_dims: int | None = None,
                 backbone_options: dict | None = None, context: float = 0.1, work_spacing: float | None = None,
                 max_work_side: int = 80, fine_voxels: int = 72**3, max_work_voxels: int = 160**3,
                 max_carry_voxels: int = 96**3):
        self.template = template = template[0] if isinstance(template, (list, tuple)) else template
        # what :meth:`like` gives a OneShot of another template (the backbone and segmenter are shared)
        self._settings = dict(work_size=work_size, min_work_size=min_work_size, options=options,
                              refine_landmarks=refine_landmarks, window=window, reduced_dims=reduced_dims,
                              context=context, work_spacing=work_spacing, max_work_side=max_work_side,
                              fine_voxels=fine_voxels, max_work_voxels=max_work_voxels,
                              max_carry_voxels=max_carry_voxels)
        image = template.image
        self.ndim = image.ndim
        if isinstance(segmenter, str):
            check_segmenter(segmenter, self.ndim)  # before any work (or weights) for the template
        self.context = context
        self.search_radius = 0.05  # landmark re-matching window, fraction of the diagonal
        self.prior_sigma = 0.025  # width of the Gaussian prior around the carried position, likewise
        self.patch_radius = 4.0 if self.ndim == 2 else 1.5  # working pixels: landmarks are matched as patches
        self.backbone = get_backbone(backbone, **(backbone_options or {})) if isinstance(backbone, str) else backbone
        self._segmenter_spec = segmenter
        self._segmenter: Segmenter | None = None if isinstance(segmenter, str) else segmenter
        self.work_size, self.min_work_size = int(work_size), int(min(min_work_size, work_size))
        self.options = options or default_options(self.ndim)
        self.refine_landmarks = self.ndim == 2 if refine_landmarks is None else refine_landmarks
        self.window = check_window(window, None) if window is not None else template.window
        self.max_work_voxels, self.max_carry_voxels = int(max_work_voxels), int(max_carry_voxels)
        self.describe = Descriptors(self.backbone, reduced_dims or (16 if self.ndim == 2 else 24))
        self.value_range = intensity_range(image.array, self.window)
        normalized = apply_range(image.array, self.value_range)
        self._normalized = normalized if self.ndim == 2 else None  # the 2D full-resolution stage needs it
        self._stages: dict[tuple, Stage] = {}
        if self.ndim == 2:
            self.plan = None
            self._stage_key = ("work", 0.0)
            self._stage(self._stage_key, planar_grid(image.shape, self.min_work_size, self.work_size), normalized,
                        fit=True)
        else:
            self.plan = VolumeStages.plan(image.spacing, image.shape, self._annotated_bounds(), work_spacing,
                                          max_work_side, fine_voxels)
            self._coarse_stage(self.plan.coarse_spacing, normalized, fit=True)
            if self.plan.two_stage:
                self._stage(("fine", self.plan.fine_spacing), spaced_grid(image.spacing, self.plan.fine_spacing,
                                                                          *self.plan.box), normalized)
        step = max(image.shape) / max(self._first.grid.shape)  # image pixels per working pixel
        self._fine = None
        if self.ndim == 2 and template.landmarks and self.describe.pixel_level and step > FINE_STEP:
            self._fine = FineLandmarks(normalized, template.landmark_points, step)

    def like(self, template: Template) -> OneShot:
        """A OneShot of another template with this one's backbone, segmenter and options."""
        return OneShot(template, backbone=self.backbone, segmenter=self._segmenter or self._segmenter_spec,
                       **self._settings)

    @property
    def _first(self) -> Stage:
        return next(iter(self._stages.values()))

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            self._segmenter = get_segmenter(self._segmenter_spec)  # type: ignore[arg-type]
        return self._segmenter

    # -- the template ----------------------------------------------------------------------------

    def _mask_labels(self) -> list[int]:
        """The template mask's labels in use: those the template names, else every non-zero value in it."""
        if self.template.labels:
            return sorted(int(k) for k in self.template.labels)
        mask = self.template.mask
        return [] if mask is None else [int(v) for v in np.unique(mask) if v != 0]

    def _annotated_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Index bounding box (inclusive corners) of the landmarks, prompts and labels used."""
        points = [self.template.landmark_points]
        points += [np.vstack([p.positive, p.negative]) for p in self.template.prompts]
        mask = self.template.mask
        if mask is not None:
            idx = np.argwhere(np.isin(mask, self._mask_labels()))
            points.append(np.stack([idx.min(0), idx.max(0)]).astype(float))
        allp = np.vstack([p for p in points if len(p)])
        return allp.min(0), allp.max(0)

    def _roi(self, grid: WorkGrid) -> np.ndarray:
        """Working-grid region of the template whose correspondence matters: annotations plus context."""
        shape = np.array(grid.shape)
        lo, hi = (apply_affine(grid.to_work, np.stack(self._annotated_bounds()))[k] for k in (0, 1))
        if self.ndim == 2:
            margin = np.maximum(self.context * (hi - lo), 0.5 * self.context * shape)
        else:
            margin = np.maximum(0.25 * (hi - lo), 0.12 * shape)
        a = np.clip(np.floor(lo - margin), 0, shape - 1).astype(int) if self.ndim == 3 else \
            np.maximum(0, lo - margin).astype(int)
        b = np.clip(np.ceil(hi + margin) + 1, a + 1, shape).astype(int) if self.ndim == 3 else \
            np.minimum(shape, hi + margin + 1).astype(int)
        roi = np.zeros(tuple(shape), bool)
        roi[tuple(slice(x, y) for x, y in zip(a, b))] = True
        return roi

    def _coarse_stage(self, spacing: float, normalized: np.ndarray | None = None, fit: bool = False) -> Stage:
        """The whole template volume at ``spacing`` mm (prepared once per spacing a target asks for)."""
        image = self.template.image
        grid = spaced_grid(image.spacing, spacing, np.zeros(3), np.array(image.shape))
        return self._stage(("coarse", round(spacing, 4)), grid, normalized, fit)

    def _stage(self, key: tuple, grid: WorkGrid, normalized: np.ndarray | None = None, fit: bool = False) -> Stage:
        if key in self._stages:
            return self._stages[key]
        image = self.template.image
        if normalized is None:
            normalized = apply_range(image.array, self.value_range)
        work = grid.resample(normalized)
        fmap, features = self.describe.prepare(work, normalized if self.ndim == 2 else None, fit=fit)
        roi = self._roi(grid)
        dense = self.describe.dense if self.describe.pixel_level else None
        side = TemplateSide(work, features, roi, self.describe.coarse, dense, self.options)
        labels = {}
        mask = self.template.mask
        if mask is not None:
            labels = labels_on_grid(mask, self._mask_labels(), grid)
        evidence = Evidence(work, side.informative, labels, apply_affine(grid.to_work, self.template.landmark_points),
                            side.verifier, side.bank.radius, self.options.verify_side, self.options.verify_sigma,
                            self.options.verify_eps)
        self._stages[key] = Stage(grid, work, fmap, features, side, evidence)
        return self._stages[key]

    # -- per target -------------------------------------------------------------------------------

    def load(self, target: str | Path | Image | np.ndarray) -> Image:
        """A target as an :class:`Image` (a path is read; a 2D or 3D array is taken as it is)."""
        if isinstance(target, Image):
            image = target
        elif isinstance(target, np.ndarray):
            rgb = target.ndim == 3 and self.ndim == 2 and target.shape[-1] in (3, 4)  # a colour image, not a volume
            image = from_array(target[..., :3].mean(axis=-1) if rgb else target)
        else:
            image = read_image(target)
        if image.ndim != self.ndim:
            kind = {2: "a 2D image", 3: "a volume"}
            raise MedshotError(f"the template is {kind[self.ndim]} but the target is "
                               f"{kind.get(image.ndim, image.ndim)}", image.path)
        return image

    def prepare(self, image: Image, grid: WorkGrid, value_range: tuple[float, float]) -> Prepared:
        """A target (or a box of it) on a working grid, described like the template."""
        if self.ndim == 2:
            normalized = apply_range(image.array, value_range)
            work = grid.resample(normalized)
        else:  # only the part of a volume the grid covers is read and normalised
            normalized = None
            work = grid.resample(image.array, lambda part: apply_range(part, value_range))
        fmap, features = self.describe.prepare(work, normalized)
        return Prepared(image, grid, work, fmap, features)

    def correspond(self, target, deform: bool = True) -> tuple[Stage, Prepared, Correspondence]:
        """The template stage, the prepared target and their verified correspondence.

        With ``deform=False`` the correspondence stops at the verified affine choice (the last stage's);
        :meth:`deform` then finishes it exactly as ``deform=True`` would have (how several templates are
        ranked before only the best are deformed).
        """
        image = self.load(target)
        value_range = intensity_range(image.array, self.window)
        if self.ndim == 2:
            stage = self._stages[self._stage_key]
            prepared = self.prepare(image, planar_grid(image.shape, self.min_work_size, self.work_size),
                                    value_range)
            return stage, prepared, self._match(stage, prepared, deform=deform)
        plan = self.plan
        assert plan is not None
        spacing = capped_spacing(image.spacing, image.shape, plan.coarse_spacing, self.max_work_voxels)
        coarse = self._coarse_stage(spacing)
        target = self.prepare(image, spaced_grid(image.spacing, spacing, np.zeros(3), np.array(image.shape)),
                              value_range)
        if not plan.two_stage:
            return coarse, target, self._match(coarse, target, deform=deform)
        placed = self._match(coarse, target, deform=False)
        fine = self._stages[("fine", plan.fine_spacing)]
        # Every coarse candidate is refined and verified on the fine stage; only the chosen one is deformed.
        boxed, corr = choose_on_fine_stage(self, image, value_range, coarse, target, placed, fine, plan.fine_spacing)
        return fine, boxed, self.deform(fine, boxed, corr) if deform else corr

    def deform(self, stage: Stage, prepared: Prepared, corr: Correspondence) -> Correspondence:
        """A correspondence from ``correspond(..., deform=False)`` deformed and verified (``deform_verified``)."""
        return deform_verified(stage.side, prepared.work, prepared.features, corr)

    def _match(self, stage: Stage, target: Prepared, initial: np.ndarray | None = None,
               deform: bool = True) -> Correspondence:
        coarse = None
        if self.describe.pixel_level:
            def coarse(shape):
                return self.describe.coarse(target.work, shape)
        return correspond(stage.side, target.work, target.features, coarse, initial=initial, deformable=deform)

    def localize(self, target) -> TargetResult:
        return self.run(target, landmarks=True, masks=False)

    def segment(self, target) -> TargetResult:
        return self.run(target, landmarks=False, masks=True)

    def run(self, target, landmarks: bool = True, masks: bool = True) -> TargetResult:
        """Landmarks and/or label map for one target (a path, an :class:`Image` or an array)."""
        start = time.perf_counter()
        stage, prepared, corr = self.correspond(target)
        result = self.carry(stage, prepared, corr, landmarks, masks)
        result.seconds = time.perf_counter() - start
        return result

    def carry(self, stage: Stage, prepared: Prepared, corr: Correspondence, landmarks: bool = True,
              masks: bool = True, refine: bool = True) -> TargetResult:
        """The template's annotations carried through a correspondence (medshot's, or any other's).

        With ``refine=False`` they are carried unchanged: no landmark re-matching, no segmenter, no
        scores (how registration baselines are scored on the same footing).
        """
        result = TargetResult(prepared.image, correspondence_score=corr.score, correspondence=corr.chosen.name)
        if landmarks and self.template.landmarks:
            result.landmarks, evidence = self._landmarks(stage, prepared, corr, refine)
            result.evidence.update(evidence)
        if masks and (self.template.prompts or self.template.mask is not None):
            result.label_map, result.scores, result.reasons, evidence = self._masks(stage, prepared, corr, refine)
            result.evidence.update(evidence)
        return result

    def _landmarks(self, stage: Stage, prepared: Prepared, corr: Correspondence,
                   refine: bool) -> tuple[list[LandmarkResult], dict]:
        t_points = self.template.landmark_points
        carried = corr.forward(apply_affine(stage.grid.to_work, t_points))  # target working
        diag = float(np.linalg.norm(prepared.work.shape))
        evidence: list = []
        if refine:
            if upright(corr.matrix):
                # Nearly upright and of similar size: the template's own descriptors at its own points are
                # exact, where a resampled template would be slightly blurred.
                source = stage.fmap or unit_map(stage.features)
                target_map = prepared.fmap or unit_map(prepared.features)
                query = apply_affine(stage.grid.to_work, t_points)
            else:  # descriptors are not rotation-invariant: describe the template in the target's frame
                source, query = unit_map(stage.side.at(corr.backward)[0]), carried
                target_map = unit_map(prepared.features)
            m = match_points(source, target_map, query, initial=carried, radius=self.search_radius * diag,
                             prior_sigma=self.prior_sigma * diag, patch_radius=self.patch_radius)
            # Re-matching is evidence for the confidence even where the carried point is kept (volumes).
            peak, mutual = m.confidence, m.mutual
            moved = np.linalg.norm(m.points - carried, axis=1) / (self.search_radius * diag)
            found = m.points if self.refine_landmarks else carried
            evidence = stage.evidence.for_landmarks(prepared.work, corr, peak, mutual, moved, found - carried)
            conf, why = zip(*[point_score(e, self.ndim) for e in evidence]) if evidence else ((), ())
        else:
            found, conf, mutual = carried, np.full(len(carried), np.nan), np.ones(len(carried), bool)
            why = [""] * len(carried)
        points = apply_affine(prepared.grid.from_work, found)
        if refine and self.refine_landmarks and self._fine is not None:
            step = max(prepared.image.shape) / max(prepared.work.shape)
            image_matrix = prepared.grid.from_work @ corr.matrix @ stage.grid.to_work
            if step > FINE_STEP and upright(image_matrix):
                normalized = apply_range(prepared.image.array, intensity_range(prepared.image.array, self.window))
                points = self._fine.refine(normalized, points)
        world = prepared.image.index_to_world(points)
        names = [lm.name for lm in self.template.landmarks]
        found_landmarks = [LandmarkResult(n, p, w, float(c), bool(mu), r)
                           for n, p, w, c, mu, r in zip(names, points, world, conf, mutual, why)]
        return found_landmarks, dict(zip(names, evidence))

    def _masks(self, stage: Stage, prepared: Prepared, corr: Correspondence,
               refine: bool) -> tuple[np.ndarray, dict[int, float], dict[int, str], dict]:
        image = prepared.image
        template_mask = self.template.mask
        labels = [p.label for p in self.template.prompts] or self._mask_labels()
        dtype = np.uint8 if max(labels, default=0) < 256 else np.uint16
        carried = None
        if template_mask is not None:
            carried = carry_labels(template_mask, self._mask_labels() or labels, corr, stage.grid,
                                   prepared.grid, image.shape, None if self.ndim == 2 else self.max_carry_voxels,
                                   dtype)
        if not refine:
            return (np.zeros(image.shape, dtype) if carried is None else carried), {}, {}, {}
        prompts = []
        for label in labels:
            pts = next((p for p in self.template.prompts if p.label == label), None)
            pos = neg = np.zeros((0, self.ndim))
            if pts is not None:
                pos = carry_points(corr, stage.grid, prepared.grid, pts.positive)
                neg = carry_points(corr, stage.grid, prepared.grid, pts.negative)
            region = None if carried is None else carried == label
            if region is not None and region.any():
                pos, neg = points_where(pos, region, True), points_where(neg, region, False)
            box = box_from_points(pos, 0.1, image.shape) if len(pos) else None
            prompts.append(Prompt(label, pos, neg, box=box, mask=region))
        normalized = apply_range(image.array, intensity_range(image.array, self.window))
        segs = self.segmenter.segment(normalized, prompts)
        label_map = np.zeros(image.shape, dtype)
        for s in segs:
            label_map[s.mask] = s.label
        # Scores judge what the user gets: the segmenter's masks, brought to the working grid.
        final = labels_on_grid(label_map, [s.label for s in segs], prepared.grid)
        evidence = stage.evidence.for_labels(prepared.work, corr, final)
        scores, reasons = {}, {}
        for s in segs:
            scores[s.label], reasons[s.label] = mask_score(evidence.get(s.label), s.score, bool(s.mask.any()),
                                                          self.ndim)
        return label_map, scores, reasons, evidence

    def baseline_correspondence(self, target, register) -> tuple[Stage, Prepared, Correspondence]:
        """A correspondence from ``register(template_work, target_work) -> (backward, matrix)`` (a baseline),
        on the grids medshot matches on (2D: the images' own pixels up to ``work_size``)."""
        image = self.load(target)
        value_range = intensity_range(image.array, self.window)
        if self.ndim == 2:
            def own(shape):
                return planar_grid(shape, 8, min(self.work_size, max(shape)))

            grid = own(image.shape)
            t_grid = own(self.template.image.shape)
            t_work = t_grid.resample(self._normalized)
        else:
            assert self.plan is not None
            spacing = capped_spacing(image.spacing, image.shape, self.plan.fine_spacing, 96**3)
            grid = spaced_grid(image.spacing, spacing, np.zeros(3), np.array(image.shape))
            t_grid = spaced_grid(self.template.image.spacing, spacing, np.zeros(3), np.array(self.template.image.shape))
            t_work = t_grid.resample(apply_range(self.template.image.array, self.value_range))
        work = grid.resample(apply_range(image.array, value_range))
        backward, matrix = register(t_work, work)
        chosen = Candidate("baseline", matrix, Verification(0.0, 0.0, 0.0))
        stage = Stage(t_grid, t_work, None, np.zeros((0, *t_work.shape)), self._first.side, self._first.evidence)
        return stage, Prepared(image, grid, work, None, np.zeros((0, *work.shape))), \
            Correspondence(backward, matrix, chosen, [chosen])
