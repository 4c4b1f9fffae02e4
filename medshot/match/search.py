"""Global pose search: where, how large and how turned the template's structure is in a target.

The template's region of interest is drawn, once per template, at every orientation of a full
circle (a *bank* of rotated canvases at a coarse level, described by the coarse-level descriptor
function). Each target is then shrunk or enlarged once per scale hypothesis and every rotated
canvas slides over it by FFT cross-correlation, so a structure anywhere in the field of view, at
any in-plane orientation and at 0.5-2x the template's size is covered by
``angles x scales`` correlations. Matches are measured in the *template's* frame (the canvas keeps
its size; the target is resampled), so every hypothesis is scored on the same template pixels with
the same weights, and small scales do not win merely by comparing fewer pixels.

Template pixels are weighted by how informative their descriptors are, so flat regions (air,
the black outside an ultrasound fan, padding) cannot carry a match.

Coordinates are array order (row, col); see :mod:`medshot.match.geometry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .geometry import apply_affine, fft_size, grid_coords, informativeness, inside, pca_basis, project, rotation_2d

# (image at working resolution, coarse shape) -> (C, *coarse shape) descriptors
Describe = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


@dataclass
class SearchOptions:
    """Knobs of the global pose search."""

    angle_step_deg: float = 15.0  # the bank covers the full circle in these steps
    max_angle_deg: float = 180.0  # orientations searched: |angle| <= this
    scale_range: tuple[float, float] = (0.5, 2.0)
    scale_steps: int = 9
    coarse_side: int = 64  # the template's working grid at most this many coarse pixels a side
    channels: int = 8  # descriptor dimensions kept (PCA on the template's canvas)
    context: float = 1.25  # canvas radius / radius of the region of interest
    min_overlap: float = 0.5  # fraction of the weighted region that must lie inside the target
    overlap_power: float = 0.5  # mean similarity x overlap fraction^power: partial views must earn it
    info_floor: float = 0.1  # weight of a flat template pixel relative to an informative one
    peaks_per_map: int = 3
    candidates: int = 4  # distinct placements handed on for refinement
    upright_deg: float = 15.0  # the best placement within this many degrees of upright is always kept


@dataclass
class Pose:
    """One placement of the template in a target: score, rotation (degrees), scale and its affine.

    ``matrix`` maps template working-grid points (row, col) to target working-grid points.
    """

    score: float
    angle: float
    scale: float
    matrix: np.ndarray


@dataclass
class PoseBank:
    """The template's region of interest, rotated through a full circle, at the coarse search level."""

    angles: np.ndarray  # (A,) degrees
    features: list[np.ndarray]  # A x (C, n, n)
    weights: list[np.ndarray]  # A x (n, n)
    factor: float  # coarse pixels per template working pixel
    center: np.ndarray  # (2,) template working (row, col) at the canvas centre
    radius: float  # template working pixels: radius of the region of interest
    basis: np.ndarray | None
    # Per target size (the common case is one size for a whole batch), kept for the next target:
    _spectra: dict = field(default_factory=dict, repr=False)  # FFT shape -> per-angle spectra
    _factors: dict = field(default_factory=dict, repr=False)  # search shape -> per-angle overlap factors

    @property
    def size(self) -> int:
        return int(self.features[0].shape[1])

    def spectra(self, fshape: tuple[int, int]) -> list[np.ndarray]:
        """Per angle: the spectrum of the weighted canvas, for correlations of FFT shape ``fshape``."""
        if fshape not in self._spectra:
            self._spectra.clear()
            self._factors.clear()
            self._spectra[fshape] = [sfft.rfft2((f * w)[:, ::-1, ::-1], s=fshape)
                                     for f, w in zip(self.features, self.weights)]
        return self._spectra[fshape]

    def factors(self, shape: tuple[int, int], options: SearchOptions) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per angle, for a target search grid of ``shape``: what turns a correlation into a score.

        ``score = correlation * factor + excluded`` with ``factor = fraction ** (power - 1) / area``,
        where ``fraction`` is the share of the canvas's weight that the placement keeps inside the
        target, and ``excluded`` is ``-inf`` below the minimum overlap (0 elsewhere); ``None`` for an
        angle with (almost) no weight.
        """
        if shape not in self._factors:
            n = self.size
            out = []
            for w in self.weights:
                area = float(w.sum())
                if area < 2:
                    out.append(None)
                    continue
                integral = np.pad(w.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
                frac = np.clip(_overlap(integral, n, shape) / area, 1e-6, 1.0)
                kept = frac > options.min_overlap
                out.append(((np.where(kept, frac ** (options.overlap_power - 1) / area, 0.0)).astype(np.float32),
                            np.where(kept, 0.0, -np.inf).astype(np.float32)))
            self._factors[shape] = out
        return self._factors[shape]


def build_bank(image: np.ndarray, roi: np.ndarray, describe: Describe,
               options: SearchOptions | None = None) -> PoseBank:
    """Rotated coarse canvases of the template ``image`` ``(h, w)`` around its region of interest ``roi``."""
    options = options or SearchOptions()
    h, w = image.shape
    pts = np.argwhere(roi).astype(np.float64)
    if len(pts) == 0:
        pts = np.argwhere(np.ones_like(roi, bool)).astype(np.float64)
    center = pts.mean(axis=0)
    radius = float(np.sqrt(((pts - center) ** 2).sum(1).max())) + 2.0
    half = int(np.ceil(radius * options.context)) + 4
    size = 2 * half + 1
    n = max(8, int(round(size * min(1.0, options.coarse_side / max(h, w)))))
    angles = np.arange(-180.0, 180.0, options.angle_step_deg)
    angles = angles[np.abs(angles) <= options.max_angle_deg + 1e-9]
    if len(angles) == 0:
        angles = np.array([0.0])
    canvases = []
    for a in angles:
        # canvas (work resolution) pixel q <- template point c + Rot(-a) (q - half)
        to_canvas = np.eye(3)
        to_canvas[:2, 2] = half - center
        M = to_canvas @ rotation_2d(a, 1.0, center)
        coords = grid_coords(np.linalg.inv(M), (size, size))
        canvas = ndimage.map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)
        valid = inside(coords, (h, w)) & (ndimage.map_coordinates(roi.astype(np.float32), coords, order=1) > 0.5)
        canvases.append((canvas, valid))
    first = describe(canvases[0][0], (n, n))
    basis = pca_basis(first, options.channels)
    features, weights = [], []
    for a, (canvas, valid) in zip(angles, canvases):
        f = project(basis, first if a == angles[0] else describe(canvas, (n, n)))
        v = ndimage.zoom(valid.astype(np.float32), n / size, order=1, grid_mode=True, mode="nearest") > 0.5
        info = informativeness(f)
        features.append(f)
        weights.append(v * (options.info_floor + (1 - options.info_floor) * info))
    return PoseBank(angles, features, weights, n / size, center, radius, basis)


def search(bank: PoseBank, target_shape: tuple[int, int], describe_target: Callable[[tuple[int, int]], np.ndarray],
           options: SearchOptions | None = None) -> list[Pose]:
    """Placements of the bank's region in a target (working grid of ``target_shape``), best first.

    ``describe_target(shape)`` gives the target's descriptors on a grid of ``shape`` covering it.
    Returns the best distinct placements (``options.candidates`` of them, plus the best
    near-upright one when it is not among them).
    """
    options = options or SearchOptions()
    H, W = target_shape
    n = bank.size
    scales = np.geomspace(options.scale_range[0], options.scale_range[1], max(1, options.scale_steps))
    if options.scale_steps == 1:
        scales = np.array([1.0])
    shapes = {s: (max(4, int(round(H * bank.factor / s))), max(4, int(round(W * bank.factor / s)))) for s in scales}
    biggest = max(shapes.values(), key=lambda sh: sh[0] * sh[1])
    fshape = (fft_size(biggest[0] + n), fft_size(biggest[1] + n))
    spectra = bank.spectra(fshape)
    peaks: list[tuple[float, float, float, float, float]] = []  # score, angle, scale, row, col (work)
    half = max(1, n // 8)  # peaks closer than this (search pixels) are one peak
    for s in scales:
        shape = shapes[s]
        f = np.array(shape, float) / np.array([H, W], float)  # target working -> search grid
        F = sfft.rfft2(project(bank.basis, describe_target(shape)), s=fshape)
        valid = (shape[0] + n - 1, shape[1] + n - 1)  # correlation indices where canvas and target overlap
        for a, Tf, scoring in zip(bank.angles, spectra, bank.factors(shape, options)):
            if scoring is None:
                continue
            factor, excluded = scoring
            score = sfft.irfft2((Tf * F).sum(0), s=fshape)[: valid[0], : valid[1]] * factor + excluded
            for _ in range(options.peaks_per_map):
                ky, kx = divmod(int(np.argmax(score)), valid[1])
                if not np.isfinite(score[ky, kx]):
                    break
                # index k pairs canvas pixel 0 with target pixel k - (n - 1); the canvas centre is (n - 1) / 2
                at = (np.array([ky, kx]) - (n - 1) / 2 + 0.5) / f - 0.5
                peaks.append((float(score[ky, kx]), float(a), float(s), at[0], at[1]))
                score[max(0, ky - half): ky + half + 1, max(0, kx - half): kx + half + 1] = -np.inf
    found = []
    for score, a, s, row, col in peaks:
        M = rotation_2d(a, s, (0.0, 0.0))
        M[:2, 2] = np.array([row, col]) - M[:2, :2] @ bank.center
        found.append(Pose(score, a, s, M))
    found.sort(key=lambda p: -p.score)
    return distinct(found, bank, options)


def _overlap(integral: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Canvas weight inside the target for every correlation index (from the weights' integral image).

    Index ``k`` puts canvas pixel ``u`` on target pixel ``u + k - (n - 1)``, so the canvas rows inside
    the target run from ``max(0, n - 1 - k)`` to ``min(n - 1, n - 2 - k + H)``.
    """
    bounds = []
    for length in shape:
        k = np.arange(length + n - 1)
        bounds.append((np.maximum(0, n - 1 - k), np.minimum(n - 1, n - 2 - k + length) + 1))
    (r0, r1), (c0, c1) = bounds
    return (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])


def distinct(found: list[Pose], bank: PoseBank, options: SearchOptions) -> list[Pose]:
    """The best placements that differ in position (a quarter radius), scale (~35 %) or turn (45 degrees)."""
    chosen: list[Pose] = []
    where = [apply_affine(p.matrix, bank.center)[0] for p in found]
    picked: list[int] = []
    for i, p in enumerate(found):
        if len(chosen) >= options.candidates:
            break
        if all(np.hypot(*(where[i] - where[j])) > 0.25 * bank.radius * min(p.scale, found[j].scale)
               or abs(np.log(p.scale / found[j].scale)) > 0.3
               or abs((p.angle - found[j].angle + 180) % 360 - 180) > 45 for j in picked):
            chosen.append(p)
            picked.append(i)
    upright = next((p for p in found if abs(p.angle) <= options.upright_deg), None)
    if upright is not None and all(upright is not p for p in chosen):
        chosen.append(upright)
    return chosen
