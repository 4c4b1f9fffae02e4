"""One template volume -> landmarks and label maps in any number of target volumes.

The method, step by step:

1. **Common working grids.** Template and target are reoriented to canonical RAS+ on loading and
   resampled to shared, near-isotropic voxel sizes, so different slice counts, spacings and fields
   of view meet on equal terms: slice k of the template is never assumed to be slice k of the
   target. When the annotations are small in the template's field of view, a coarse stage on the
   whole volumes places them and a fine stage works on boxes around them only; otherwise one stage.
2. **Descriptors**, once per volume on the working grid: weights-free 3D jets + MIND
   (:func:`~medshot.volume.features3d.classical_features_3d`), or any 2D backbone run once per
   axial slice and projected to a small PCA basis while streaming.
3. **Correspondence** (:func:`~medshot.volume.align3d.align`): FFT search over translations, scales
   and small rotations, affine by 3D block matching, then a smooth deformation on a crop around
   where the template's annotated region lands.
4. **Landmarks** are carried through the correspondence, then optionally re-matched locally in 3D
   by descriptor similarity (with a mutual-nearest-neighbour check for the confidence).
5. **Label maps**: the template's label map is pulled through the backward map onto the target's
   own voxels (only inside the crop; at most ``max_refine_voxels`` at a time, so a large CT never
   needs full-resolution fields), optionally refined by a multi-label 3D random walker in a band
   around the carried boundaries, and cleaned per label (largest connected component, holes filled).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.errors import MedshotError
from ..features import Backbone, get_backbone
from ..features.base import l2_normalize
from .align3d import AlignOptions3D, Correspondence3D, align, resample, separable_interp
from .features3d import classical_features_3d, fit_basis, project, slice_features
from .io3d import Volume, from_array, load_volume
from .template3d import VolumeTemplate

REFINERS = ("randomwalker", "none")


@dataclass
class LandmarkResult3D:
    """A landmark found in a target: source voxel indices, world mm and a confidence in [0, 1]."""

    name: str
    ijk: np.ndarray
    xyz: np.ndarray
    confidence: float
    mutual: bool = True


@dataclass
class VolumeResult:
    """What medshot found in one target volume.

    ``label_map`` is in the target's canonical orientation (``volume.shape``); write it with
    :func:`~medshot.volume.io3d.save_label_volume` to get the target's own geometry back.
    """

    volume: Volume
    landmarks: list[LandmarkResult3D] = field(default_factory=list)
    label_map: np.ndarray | None = None
    scores: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    correspondence_score: float = 0.0
    window: tuple[float, float] | None = None  # raw intensities shown as [0, 1]

    @property
    def landmarks_ijk(self) -> np.ndarray:
        return np.array([lm.ijk for lm in self.landmarks], float).reshape(-1, 3)

    @property
    def landmarks_xyz(self) -> np.ndarray:
        return np.array([lm.xyz for lm in self.landmarks], float).reshape(-1, 3)


@dataclass
class Prepared3D:
    """A volume (or a box of it) on a working grid, with its descriptors.

    Working voxel ``w`` and canonical voxel ``c`` are related by ``w = (c - lo + 0.5) f - 0.5``
    with ``f`` = ``factor`` (working voxels per canonical voxel) and ``lo`` the box's first
    canonical voxel.
    """

    volume: Volume
    factor: np.ndarray
    work: np.ndarray  # (X, Y, Z) in [0, 1]
    features: np.ndarray | None  # (C, X, Y, Z) unit descriptors
    window: tuple[float, float]  # raw intensities mapped to [0, 1]
    lo: np.ndarray = field(default_factory=lambda: np.zeros(3, int))

    @property
    def spacing(self) -> np.ndarray:
        """Working voxel size (mm) per axis."""
        return self.volume.spacing / self.factor

    def to_work(self, canonical: np.ndarray) -> np.ndarray:
        return (np.asarray(canonical, float) - self.lo + 0.5) * self.factor - 0.5

    def to_canonical(self, work: np.ndarray) -> np.ndarray:
        return (np.asarray(work, float) + 0.5) / self.factor - 0.5 + self.lo

    def to_canonical_matrix(self) -> np.ndarray:
        """4x4 working voxel -> canonical voxel."""
        M = np.eye(4)
        M[:3, :3] = np.diag(1.0 / self.factor)
        M[:3, 3] = 0.5 / self.factor - 0.5 + self.lo
        return M


def working_shape(extent_mm: np.ndarray, spacing: float) -> tuple[int, int, int]:
    return tuple(max(4, int(round(e / spacing))) for e in extent_mm)  # type: ignore[return-value]


def normalize_window(array: np.ndarray, window: tuple[float, float] | None,
                     percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """Intensity range mapped to [0, 1]: the window, or robust percentiles of (a sample of) the array."""
    if window is not None:
        return float(window[0]), float(window[1])
    flat = array.reshape(-1)
    step = max(1, flat.size // 2_000_000)
    lo, hi = np.percentile(flat[::step], percentiles)
    if hi - lo < 1e-6:
        lo, hi = float(flat.min()), float(flat.max())
    return float(lo), float(hi)


def apply_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    if hi - lo < 1e-6:
        return np.zeros(array.shape, np.float32)
    return np.clip((np.asarray(array, np.float32) - lo) / (hi - lo), 0.0, 1.0)


class VolumeShot:
    """Find a template volume's landmarks and structures in new volumes.

    Matching runs in one or two stages. Stage 1 (coarse) sees both whole volumes at
    ``coarse spacing`` = template field of view / ``max_work_side`` and finds the global placement
    and an affine. When the annotated region is much smaller than the field of view, stage 2 (fine)
    repeats affine + deformation on boxes around the region only, at ``fine spacing`` = the box's
    size over ``fine_voxels`` (never finer than the template's finest native spacing). Otherwise
    one stage at the fine spacing does everything.

    Parameters
    ----------
    template : VolumeTemplate
    backbone : str or Backbone
        ``"classical"`` (default) = weights-free 3D descriptors; any other registered name or a
        2D :class:`~medshot.features.Backbone` object runs per axial slice.
    refine : {"none", "randomwalker"}
        Label-map refinement after carrying the template's labels.
    work_spacing : float, optional
        Fine working voxel size in mm (default automatic, see above).
    max_work_side : int
        Longest side of the template's coarse grid.
    fine_voxels : int
        Voxel budget of the fine stage's template box.
    max_work_voxels : int
        A target whose coarse grid would exceed this is matched at a coarser common spacing (the
        template is re-prepared at that spacing), bounding memory.
    window : (low, high), optional
        Intensity window (e.g. CT HU); default the template's, else robust percentiles per volume.
    refine_landmarks : bool
        Re-match each landmark's descriptor in a small 3D window after the dense correspondence.
    max_refine_voxels : int
        Cap on the grid the label map is carried and refined on at once (memory bound).
    """

    def __init__(self, template: VolumeTemplate, backbone: str | Backbone = "classical",
                 refine: str = "none", work_spacing: float | None = None, max_work_side: int = 80,
                 fine_voxels: int = 72**3, max_work_voxels: int = 160**3,
                 window: tuple[float, float] | None = None, align_options: AlignOptions3D | None = None,
                 refine_landmarks: bool = False, reduced_dims: int = 24, slice_side: int = 224,
                 max_refine_voxels: int = 96**3, backbone_options: dict | None = None, rw_beta: float = 130.0,
                 band: float = 0.3, baseline_voxels: int = 96**3):
        if refine not in REFINERS:
            raise MedshotError(f"unknown refinement '{refine}' for volumes; known: {', '.join(REFINERS)}")
        self.template = template
        if isinstance(backbone, str) and backbone == "classical":
            self.backbone: Backbone | None = None
        elif isinstance(backbone, str):
            self.backbone = get_backbone(backbone, **(backbone_options or {}))
        else:
            self.backbone = backbone
        self.refine = refine
        self.max_work_voxels = int(max_work_voxels)
        self.window = window if window is not None else template.window
        self.align_options = align_options or AlignOptions3D()
        self.refine_landmarks = refine_landmarks
        self.reduced_dims = reduced_dims
        self.slice_side = slice_side
        self.max_refine_voxels = int(max_refine_voxels)
        self.rw_beta = rw_beta
        self.band = band
        self.baseline_voxels = int(baseline_voxels)
        vol = template.image
        finest = float(vol.spacing.min())
        extent = np.array(vol.shape) * vol.spacing
        self.coarse_spacing = max(finest, float(extent.max()) / max_work_side)
        self.crop = self._template_box()
        crop_mm = (self.crop[1] - self.crop[0]) * vol.spacing
        auto = max(finest, float(np.prod(crop_mm) / fine_voxels) ** (1 / 3))
        self.fine_spacing = float(work_spacing) if work_spacing else auto
        crop_fraction = float(np.prod(crop_mm) / np.prod(extent))
        # A second stage pays off only when it sees the region finer or much more tightly.
        self.two_stage = self.fine_spacing < 0.8 * self.coarse_spacing or crop_fraction < 0.4
        if not self.two_stage:
            self.coarse_spacing = self.fine_spacing
        self._bases: dict[str, np.ndarray | None] = {}
        self._templates: dict[tuple, tuple[Prepared3D, np.ndarray]] = {}
        self._template_at("coarse", self.coarse_spacing)
        if self.two_stage:
            self._template_at("fine", self.fine_spacing)

    @property
    def backbone_name(self) -> str:
        return "classical" if self.backbone is None else str(getattr(self.backbone, "name", "backbone"))

    @property
    def work_spacing(self) -> float:
        return self.fine_spacing

    # -- preparation ----------------------------------------------------------------------------

    def prepare(self, volume: Volume, spacing: float, stage: str = "coarse", box=None,
                window: tuple[float, float] | None = None, describe: bool = True) -> Prepared3D:
        """Resample a volume (or the canonical ``box`` = (lo, hi) of it) to ``spacing`` mm and describe it."""
        lo, hi = (np.zeros(3, int), np.array(volume.shape)) if box is None else (np.asarray(box[0]), np.asarray(box[1]))
        sub = volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        shape = working_shape((hi - lo) * volume.spacing, spacing)
        work_raw = resample(sub, shape)
        window = window or normalize_window(work_raw, self.window)
        work = apply_window(work_raw, window)
        del work_raw
        factor = np.array(shape, float) / (hi - lo)
        feats = None
        if describe:
            fit = stage not in self._bases
            if self.backbone is None:
                data = classical_features_3d(work)
                if fit:
                    self._bases[stage] = fit_basis(data, self.reduced_dims)
                feats = project(data, self._bases[stage])
                del data
            else:
                feats, basis = slice_features(work, self.backbone, self.reduced_dims,
                                              basis=self._bases.get(stage), slice_side=self.slice_side)
                if fit:
                    self._bases[stage] = basis
        return Prepared3D(volume, factor, work, feats, window, lo.astype(int))

    def _template_at(self, stage: str, spacing: float, describe: bool = True) -> tuple[Prepared3D, np.ndarray]:
        key = (stage, round(spacing, 4), describe)
        if key not in self._templates:
            box = self.crop if stage == "fine" else None
            prepared = self.prepare(self.template.image, spacing, stage, box, describe=describe)
            self._templates[key] = (prepared, self._roi(prepared))
        return self._templates[key]

    def _annotation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical bounding box (inclusive corners) of the landmarks and labels used."""
        pts = [self.template.landmarks_canonical]
        mask = self.template.mask
        if mask is not None:
            labels = list(self.template.labels) or [v for v in np.unique(mask) if v]
            idx = np.argwhere(np.isin(mask, labels))
            if len(idx):
                pts.append(np.stack([idx.min(0), idx.max(0)]).astype(float))
        allp = np.vstack(pts)
        return allp.min(0), allp.max(0)

    def _template_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical box (lo, hi exclusive) of the fine stage: annotations plus context."""
        vol = self.template.image
        lo, hi = self._annotation_bounds()
        size_mm = (hi - lo + 1) * vol.spacing
        margin = np.maximum(0.3 * size_mm, 20.0) / vol.spacing
        a = np.clip(np.floor(lo - margin), 0, np.array(vol.shape) - 1).astype(int)
        b = np.clip(np.ceil(hi + margin) + 1, a + 2, np.array(vol.shape)).astype(int)
        return a, b

    def _roi(self, t: Prepared3D) -> np.ndarray:
        """Working-grid region of the template whose correspondence matters: annotations plus context."""
        shape = np.array(t.work.shape)
        lo, hi = self._annotation_bounds()
        lo, hi = t.to_work(lo), t.to_work(hi)
        m = np.maximum(0.25 * (hi - lo), 0.12 * shape)
        a = np.clip(np.floor(lo - m), 0, shape - 1).astype(int)
        b = np.clip(np.ceil(hi + m) + 1, a + 1, shape).astype(int)
        roi = np.zeros(tuple(shape), bool)
        roi[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = True
        return roi

    def spacing_for(self, volume: Volume, spacing: float, max_voxels: int | None = None) -> float:
        """Common working spacing for a whole target: ``spacing``, coarsened if the grid would be too large."""
        cap = self.max_work_voxels if max_voxels is None else max_voxels
        n = float(np.prod(working_shape(np.array(volume.shape) * volume.spacing, spacing)))
        if n <= cap:
            return spacing
        return spacing * (n / cap) ** (1 / 3)

    # -- per target -----------------------------------------------------------------------------

    def load(self, target: str | Path | Volume | np.ndarray) -> Volume:
        if isinstance(target, Volume):
            return target
        if isinstance(target, np.ndarray):
            return from_array(target)
        return load_volume(target)

    def correspond(self, target: str | Path | Volume, baseline: str | None = None
                   ) -> tuple[Prepared3D, Prepared3D, Correspondence3D]:
        """Template preparation, target preparation and their correspondence (medshot's or a baseline's)."""
        vol = self.load(target)
        if baseline is not None:
            from .baselines3d import register3d

            # The reference sees both whole volumes at the fine spacing, coarsened to a voxel budget that
            # keeps SimpleITK's B-spline registration to minutes. "affine@medshot" / "bspline@medshot"
            # start it from medshot's global placement instead of the images' centres of mass.
            method, _, start = baseline.partition("@")
            spacing = self.spacing_for(vol, self.fine_spacing, self.baseline_voxels)
            tmpl, _ = self._template_at("baseline", spacing, describe=False)
            prep = self.prepare(vol, spacing, describe=False)
            initial = None
            if start == "medshot":
                sp = self.spacing_for(vol, self.coarse_spacing)
                tc, roi_c = self._template_at("coarse", sp)
                sc = self.prepare(vol, sp, "coarse")
                placed = align(tc.features, roi_c, sc.features, replace(self.align_options, deformable=False))
                # baseline target voxel -> target canonical -> coarse grids -> template canonical -> baseline
                to_template = (np.linalg.inv(tmpl.to_canonical_matrix()) @ tc.to_canonical_matrix()
                               @ np.linalg.inv(placed.affine) @ np.linalg.inv(sc.to_canonical_matrix())
                               @ prep.to_canonical_matrix())
                initial = to_template
            elif start:
                raise MedshotError(f"unknown baseline start '{start}' (known: medshot)")
            return tmpl, prep, register3d(tmpl.work, prep.work, tmpl.spacing, prep.spacing, method,
                                          initial_voxels=initial)
        spacing = self.spacing_for(vol, self.coarse_spacing)
        tc, roi_c = self._template_at("coarse", spacing)
        sc = self.prepare(vol, spacing, "coarse")
        if not self.two_stage:
            return tc, sc, align(tc.features, roi_c, sc.features, self.align_options)
        coarse = align(tc.features, roi_c, sc.features, replace(self.align_options, deformable=False))
        tf, roi_f = self._template_at("fine", self.fine_spacing)
        # template fine voxel -> template canonical -> coarse grids -> target canonical
        to_target = (sc.to_canonical_matrix() @ coarse.affine @ np.linalg.inv(tc.to_canonical_matrix())
                     @ tf.to_canonical_matrix())
        box = _mapped_box(to_target, np.array(tf.work.shape), vol, self.fine_spacing)
        sf = self.prepare(vol, self.fine_spacing, "fine", box, window=sc.window)
        del sc
        initial = np.linalg.inv(sf.to_canonical_matrix()) @ to_target
        corr = align(tf.features, roi_f, sf.features, self.align_options, initial=initial)
        return tf, sf, corr

    def localize(self, target) -> VolumeResult:
        return self.run(target, landmarks=True, masks=False)

    def segment(self, target) -> VolumeResult:
        return self.run(target, landmarks=False, masks=True)

    def run(self, target, landmarks: bool = True, masks: bool = True, baseline: str | None = None) -> VolumeResult:
        """Landmarks and/or label map for one target volume.

        With ``baseline`` (``"affine"`` or ``"bspline"``) the correspondence comes from SimpleITK
        registration of the whole volumes at the fine spacing instead, and the template's annotations
        are carried through it unchanged (no landmark re-matching, no refinement).
        """
        start = time.perf_counter()
        tmpl, prep, corr = self.correspond(target, baseline)
        result = VolumeResult(prep.volume, correspondence_score=corr.score, window=prep.window)
        if landmarks and self.template.landmarks:
            result.landmarks = self._landmarks(tmpl, prep, corr, refine=self.refine_landmarks and baseline is None)
        if masks and self.template.mask is not None:
            refine = self.refine if baseline is None else "none"
            result.label_map, result.scores = self._masks(tmpl, prep, corr, refine)
        result.seconds = time.perf_counter() - start
        return result

    # -- landmarks ------------------------------------------------------------------------------

    def _landmarks(self, t: Prepared3D, s: Prepared3D, corr: Correspondence3D, refine: bool) -> list[LandmarkResult3D]:
        tw = t.to_work(self.template.landmarks_canonical)
        initial = corr.forward(tw)
        if refine and t.features is not None and s.features is not None:
            xyz, conf, mutual = match_points_3d(t.features, s.features, tw, initial, radius=3.0, prior_sigma=2.0)
        else:
            xyz, mutual = initial, np.ones(len(initial), bool)
            if t.features is not None and s.features is not None:
                a = _sample(t.features, tw)
                b = _sample(s.features, initial)
                conf = np.clip((a * b).sum(1), 0, 1)
            else:
                conf = np.full(len(initial), max(0.0, corr.score))
        canonical = s.to_canonical(xyz)
        ijk = s.volume.canonical_to_source(canonical)
        world = s.volume.source_to_world(ijk)
        return [LandmarkResult3D(lm.name, p, w, float(c), bool(mu))
                for lm, p, w, c, mu in zip(self.template.landmarks, ijk, world, conf, mutual)]

    # -- label maps -----------------------------------------------------------------------------

    def _masks(self, t: Prepared3D, s: Prepared3D, corr: Correspondence3D,
               refine: str) -> tuple[np.ndarray, dict[int, float]]:
        mask = self.template.mask
        assert mask is not None
        labels = sorted(self.template.labels) or [int(v) for v in np.unique(mask) if v]
        vol = s.volume
        out = np.zeros(vol.shape, np.uint8 if max(labels) < 256 else np.uint16)
        # Target canonical voxels that the correspondence's box covers (labels land nowhere else).
        w_lo = np.array([b.start for b in corr.box], float) - 0.5
        w_hi = np.array([b.stop for b in corr.box], float) - 0.5
        c_lo = np.clip(np.floor(s.to_canonical(w_lo)).astype(int), 0, np.array(vol.shape) - 1)
        c_hi = np.clip(np.ceil(s.to_canonical(w_hi)).astype(int) + 1, c_lo + 1, np.array(vol.shape))
        crop = np.array(c_hi - c_lo)
        r = min(1.0, (self.max_refine_voxels / float(np.prod(crop))) ** (1 / 3))
        g_shape = tuple(max(2, int(round(n * r))) for n in crop)
        g_factor = np.array(g_shape, float) / crop
        axes = [c_lo[a] + (np.arange(g_shape[a]) + 0.5) / g_factor[a] - 0.5 for a in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"))  # target canonical coordinates
        tw = corr.backward_grid(s.to_work(grid.reshape(3, -1).T).T.reshape(grid.shape))
        tc = t.to_canonical(tw.reshape(3, -1).T).T.reshape(grid.shape)
        del tw
        probs = np.stack([_carry_label(mask, lab, tc) for lab in labels])
        scores = self._scores(t, s, tc, grid, probs, labels)
        del tc
        if refine == "randomwalker" and probs.max() > 0.5:
            image = apply_window(ndimage.map_coordinates(vol.array, grid, order=1, mode="nearest"), s.window)
            probs = self._random_walker(image, probs, vol.spacing / g_factor)
        del grid
        # Per-label probabilities back to the target's own voxels inside the crop, a slab of slices at a
        # time with a running argmax: memory grows neither with the number of labels nor with the crop.
        upsample = g_shape != tuple(crop)
        up_axes = [(np.arange(n) + 0.5) * f - 0.5 for n, f in zip(crop, g_factor)]
        best_p = np.zeros(tuple(crop), np.float32)
        best_i = np.zeros(tuple(crop), np.int16)
        step = 16
        for z0 in range(0, int(crop[2]), step):
            z1 = min(int(crop[2]), z0 + step)
            bp, bi = best_p[:, :, z0:z1], best_i[:, :, z0:z1]
            for i, p in enumerate(probs):
                if upsample:
                    q = separable_interp(p, [up_axes[0], up_axes[1], up_axes[2][z0:z1]], 1, axis_order=(2, 0, 1))
                else:
                    q = p[:, :, z0:z1]
                better = q > bp
                bp[better] = q[better]
                bi[better] = i
        del probs
        fg = best_p > 0.5
        del best_p
        lab_crop = np.zeros(tuple(crop), out.dtype)
        for i, lab in enumerate(labels):
            region = _clean(fg & (best_i == i))
            lab_crop[region & (lab_crop == 0)] = lab
        out[c_lo[0]:c_hi[0], c_lo[1]:c_hi[1], c_lo[2]:c_hi[2]] = lab_crop
        return out, scores

    def _scores(self, t: Prepared3D, s: Prepared3D, tc: np.ndarray, grid: np.ndarray, probs: np.ndarray,
                labels: list[int]) -> dict[int, float]:
        """Per label: mean cosine similarity of template and target descriptors over the carried region."""
        if t.features is None or s.features is None:
            return {lab: 0.0 for lab in labels}
        scores = {}
        for i, lab in enumerate(labels):
            sel = probs[i] > 0.5
            if not sel.any():
                scores[lab] = 0.0
                continue
            idx = np.flatnonzero(sel)
            idx = idx[:: max(1, len(idx) // 4000)]
            a = _sample(t.features, t.to_work(tc.reshape(3, -1)[:, idx].T))
            b = _sample(s.features, s.to_work(grid.reshape(3, -1)[:, idx].T))
            scores[lab] = float(np.clip((a * b).sum(1).mean(), 0, 1))
        return scores

    def _random_walker(self, image: np.ndarray, probs: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        """Multi-label random walker in a band around the carried boundaries; returns label probabilities."""
        from skimage.segmentation import random_walker

        n = len(probs)
        fg = probs.max(0) > 0.5
        best = probs.argmax(0)
        seeds = np.zeros(image.shape, np.int32)
        unit = float(spacing.min())
        sampling = spacing / unit
        outside = ndimage.distance_transform_edt(~fg, sampling=sampling)
        total = max(int(fg.sum()), 1)
        band_bg = max(1.5, self.band * (3 * total / (4 * np.pi)) ** (1 / 3))
        seeds[outside > band_bg] = n + 1
        for i in range(n):
            region = fg & (best == i)
            if not region.any():
                continue
            radius = (3 * region.sum() / (4 * np.pi)) ** (1 / 3)
            inside = ndimage.distance_transform_edt(region, sampling=sampling)
            core = inside > max(1.0, self.band * radius)
            if not core.any():
                core = inside >= inside.max()
            seeds[core] = i + 1
        if not (seeds > 0).any() or (seeds == 0).sum() == 0:
            return probs
        present = np.unique(seeds[seeds > 0])
        data = ndimage.gaussian_filter(image.astype(np.float64), 0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rw = random_walker(data, seeds, beta=self.rw_beta, mode="cg_j", tol=1e-3, spacing=sampling,
                               return_full_prob=True)
        rw = np.nan_to_num(rw, nan=0.0)
        out = np.zeros_like(probs)
        for k, lab in enumerate(present):
            if lab <= n:
                out[lab - 1] = rw[k]
        return out


def _mapped_box(to_target: np.ndarray, shape: np.ndarray, vol: Volume, spacing: float,
                margin: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Canonical box (lo, hi) of the target covering a template grid of ``shape`` mapped by ``to_target``."""
    lo, hi = -0.5, shape - 0.5
    corners = np.array([[a, b, c] for a in (lo, hi[0]) for b in (lo, hi[1]) for c in (lo, hi[2])])
    mapped = corners @ to_target[:3, :3].T + to_target[:3, 3]
    a, b = mapped.min(0), mapped.max(0)
    m = margin * (b - a) + 2 * spacing / vol.spacing
    lo_i = np.clip(np.floor(a - m), 0, np.array(vol.shape) - 1).astype(int)
    hi_i = np.clip(np.ceil(b + m) + 1, lo_i + 2, np.array(vol.shape)).astype(int)
    return lo_i, hi_i


def _carry_label(mask: np.ndarray, label: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of one label's indicator at template canonical ``coords`` ``(3, ...)``.

    Only the label's bounding box (plus one voxel) is converted to float, so a large template's
    label map is never copied whole.
    """
    idx = np.argwhere(mask == label)
    if len(idx) == 0:
        return np.zeros(coords.shape[1:], np.float32)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, mask.shape)
    sub = (mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == label).astype(np.float32)
    shifted = coords - lo.reshape((3,) + (1,) * (coords.ndim - 1))
    return ndimage.map_coordinates(sub, shifted, order=1, mode="constant", cval=0.0)


def _clean(region: np.ndarray) -> np.ndarray:
    """Largest connected component, holes filled (a structure is one piece)."""
    if not region.any():
        return region
    lab, n = ndimage.label(region)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        region = lab == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(region)


def _sample(features: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear descriptors ``(N, C)`` at working-grid points ``(N, 3)``, unit length."""
    p = np.asarray(points, float).reshape(-1, 3).T
    return l2_normalize(np.stack([ndimage.map_coordinates(ch, p, order=1, mode="nearest") for ch in features], 1),
                        axis=1)


def match_points_3d(template: np.ndarray, target: np.ndarray, template_pts: np.ndarray, initial: np.ndarray,
                    radius: float = 3.0, prior_sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-match points by descriptor similarity in a window around ``initial`` (working voxels).

    Returns matched points ``(N, 3)``, confidence in [0, 1] (peak distinctness, halved when the
    match is not mutual) and the mutual flags.
    """
    n = len(template_pts)
    out = np.array(initial, float).reshape(-1, 3).copy()
    conf = np.zeros(n)
    mutual = np.ones(n, bool)
    q = _sample(template, template_pts)
    R = int(np.ceil(radius))
    offs = np.stack(np.meshgrid(*[np.arange(-R, R + 1)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    offs = offs[np.linalg.norm(offs, axis=1) <= radius]
    for i in range(n):
        cand = out[i] + offs
        sims = _sample(target, cand) @ q[i]
        weighted = (sims + 1) / 2 * np.exp(-np.sum(offs**2, 1) / (2 * prior_sigma**2))
        b = int(np.argmax(weighted))
        out[i] = cand[b]
        background = float(np.median(sims))
        conf[i] = np.clip((sims[b] - background) / max(1e-6, 1 - background), 0, 1)
        # Mutual check: the target descriptor's best match near the template point should be that point.
        back = _sample(template, template_pts[i] + offs) @ _sample(target, cand[b][None])[0]
        mutual[i] = np.linalg.norm(offs[int(np.argmax(back))]) <= 1.5
    conf = np.where(mutual, conf, 0.5 * conf)
    return out, conf, mutual
