"""Global pose search: where, how large and how turned the template's structure is in a target.

The template's region of interest is drawn, once per template, at every orientation the search
tries (:mod:`.rotations`: a full circle in 2D, small turns in 3D) as a *bank* of rotated canvases
at a coarse level, described by the coarse-level descriptor function. Each target is then shrunk
or enlarged once per scale hypothesis and every rotated canvas slides over it by FFT
cross-correlation, so a structure anywhere in the field of view, at any tried orientation and at
0.5-2x the template's size is covered by ``rotations x scales`` correlations. Matches are
measured in the *template's* frame (the canvas keeps its size; the target is resampled), so every
hypothesis is scored on the same template pixels with the same weights, and small scales do not
win merely by comparing fewer pixels.

Template pixels are weighted by how informative their descriptors are, so flat regions (air,
the black outside an ultrasound fan, padding) cannot carry a match.

Written once for images of any dimension; coordinates are array order (see
:mod:`medshot.core.geometry`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from ..core.geometry import apply_affine, fft_size, grid_coords, informativeness, inside, pca_basis, project
from .rotations import candidates as orientations
from .rotations import turn_deg

# (image at working resolution, coarse shape) -> (C, *coarse shape) descriptors
Describe = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


@dataclass
class SearchOptions:
    """Knobs of the global pose search."""

    angle_step_deg: float = 15.0  # 2D: the bank covers the full circle in these steps ...
    max_angle_deg: float = 180.0  # ... with |angle| <= this
    max_angle_3d_deg: float = 10.0  # 3D: no turn, and turns of this much about each axis
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
    """One placement of the template in a target: score, turn (degrees, signed in 2D), scale and its affine.

    ``matrix`` maps template working-grid points (array order) to target working-grid points.
    """

    score: float
    angle: float
    scale: float
    matrix: np.ndarray
    rotation: np.ndarray | None = None


# Target sizes a bank keeps spectra for, and the bytes they may take together (a 3D bank's spectra for
# one size: tens to a few hundred MB; the newest size is kept whatever its size, as before).
CACHED_SIZES = 4
CACHED_BYTES = 384 * 2**20


def _nbytes(entry) -> int:
    """Bytes of a cache entry: an array, or lists and tuples of arrays (``None`` where an angle has none)."""
    if isinstance(entry, np.ndarray):
        return entry.nbytes
    return sum(_nbytes(e) for e in entry) if isinstance(entry, (list, tuple)) else 0


def _make_room(cache: dict, keep: int = CACHED_SIZES, need: int | None = None) -> None:
    """Drop the least recently used entries of ``cache`` (insertion-ordered) so one more fits in ``keep``
    entries and, where ``need`` (bytes) is given, in :data:`CACHED_BYTES`."""
    def over() -> bool:
        return need is not None and sum(_nbytes(entry) for entry in cache.values()) + need > CACHED_BYTES

    while cache and (len(cache) >= keep or over()):
        cache.pop(next(iter(cache)))


@dataclass
class PoseBank:
    """The template's region of interest at every orientation the search tries, at the coarse level."""

    rotations: list[np.ndarray]  # A x (ndim, ndim)
    features: list[np.ndarray]  # A x (C, n, n[, n])
    weights: list[np.ndarray]  # A x (n, n[, n])
    factor: float  # coarse pixels per template working pixel
    center: np.ndarray  # (ndim,) template working position at the canvas centre
    radius: float  # template working pixels: radius of the region of interest
    basis: np.ndarray | None
    # Per target size, kept for later targets of that size (an archive holds a few sizes over and over;
    # a volume's spectra cost seconds). The oldest size goes first past ``CACHED_SIZES``.
    _spectra: dict = field(default_factory=dict, repr=False)  # FFT shape -> per-angle spectra
    _factors: dict = field(default_factory=dict, repr=False)  # search shape -> per-angle overlap factors

    @property
    def size(self) -> int:
        return int(self.features[0].shape[1])

    @property
    def ndim(self) -> int:
        return len(self.center)

    @property
    def angles(self) -> list[float]:
        return [turn_deg(R) for R in self.rotations]

    def spectra(self, fshape: tuple[int, ...]) -> list[np.ndarray]:
        """Per orientation: the spectrum of the weighted canvas, for correlations of FFT shape ``fshape``."""
        if fshape in self._spectra:
            self._spectra[fshape] = self._spectra.pop(fshape)  # most recently used last
        else:
            # complex spectra of the canvases' dtype: half the last axis, times angles and channels
            need = (len(self.features) * np.prod(self.features[0].shape[:1] + fshape[:-1]) * (fshape[-1] // 2 + 1)
                    * np.result_type(self.features[0].dtype, self.weights[0].dtype, np.complex64).itemsize)
            _make_room(self._spectra, need=int(need))
            flip = (slice(None),) + (slice(None, None, -1),) * self.ndim
            axes = tuple(range(1, self.ndim + 1))
            self._spectra[fshape] = [sfft.rfftn((f * w)[flip], s=fshape, axes=axes)
                                     for f, w in zip(self.features, self.weights)]
        return self._spectra[fshape]

    def factors(self, shape: tuple[int, ...], options: SearchOptions) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per angle, for a target search grid of ``shape``: what turns a correlation into a score.

        ``score = correlation * factor + excluded`` with ``factor = fraction ** (power - 1) / area``,
        where ``fraction`` is the share of the canvas's weight that the placement keeps inside the
        target, and ``excluded`` is ``-inf`` below the minimum overlap (0 elsewhere); ``None`` for an
        angle with (almost) no weight.
        """
        if shape in self._factors:
            self._factors[shape] = self._factors.pop(shape)
        else:
            n = self.size
            # a few scales per target size; per angle two real arrays of the correlation's size (3D: tens of MB)
            need = 2 * len(self.weights) * int(np.prod([m + n - 1 for m in shape])) * np.dtype(np.float32).itemsize
            _make_room(self._factors, CACHED_SIZES * 8, need=need)
            out = []
            for w in self.weights:
                area = float(w.sum())
                if area < 2:
                    out.append(None)
                    continue
                integral = w
                for axis in range(w.ndim):
                    integral = integral.cumsum(axis)
                integral = np.pad(integral, ((1, 0),) * w.ndim)
                frac = np.clip(_overlap(integral, n, shape) / area, 1e-6, 1.0)
                kept = frac > options.min_overlap
                out.append(((np.where(kept, frac ** (options.overlap_power - 1) / area, 0.0)).astype(np.float32),
                            np.where(kept, 0.0, -np.inf).astype(np.float32)))
            self._factors[shape] = out
        return self._factors[shape]


def build_bank(image: np.ndarray, roi: np.ndarray, describe: Describe,
               options: SearchOptions | None = None) -> PoseBank:
    """Rotated coarse canvases of the template ``image`` ``(M, N[, P])`` around its region of interest ``roi``."""
    options = options or SearchOptions()
    d = image.ndim
    pts = np.argwhere(roi).astype(np.float64)
    if len(pts) == 0:
        pts = np.argwhere(np.ones_like(roi, bool)).astype(np.float64)
    center = pts.mean(axis=0)
    radius = float(np.sqrt(((pts - center) ** 2).sum(1).max())) + 2.0
    half = int(np.ceil(radius * options.context)) + 4
    size = 2 * half + 1
    n = max(8, int(round(size * min(1.0, options.coarse_side / max(image.shape)))))
    turns = orientations(d, options.angle_step_deg, options.max_angle_deg, options.max_angle_3d_deg)
    canvases = []
    for R in turns:
        # canvas (work resolution) pixel q <- template point c + R^-1 (q - half)
        M = np.eye(d + 1)
        M[:d, :d] = R
        M[:d, d] = half - R @ center
        coords = grid_coords(np.linalg.inv(M), (size,) * d)
        canvas = ndimage.map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)
        valid = inside(coords, image.shape) & (ndimage.map_coordinates(roi.astype(np.float32), coords, order=1) > 0.5)
        canvases.append((canvas, valid))
    coarse = (n,) * d
    first = describe(canvases[0][0], coarse)
    basis = pca_basis(first, options.channels)
    features, weights = [], []
    for k, (canvas, valid) in enumerate(canvases):
        f = project(basis, first if k == 0 else describe(canvas, coarse))
        v = ndimage.zoom(valid.astype(np.float32), n / size, order=1, grid_mode=True, mode="nearest") > 0.5
        info = informativeness(f)
        features.append(f)
        weights.append(v * (options.info_floor + (1 - options.info_floor) * info))
    return PoseBank(turns, features, weights, n / size, center, radius, basis)


def search(bank: PoseBank, target_shape: tuple[int, ...], describe_target: Callable[[tuple[int, ...]], np.ndarray],
           options: SearchOptions | None = None) -> list[Pose]:
    """Placements of the bank's region in a target (working grid of ``target_shape``), best first.

    ``describe_target(shape)`` gives the target's descriptors on a grid of ``shape`` covering it.
    Returns the best distinct placements (``options.candidates`` of them, plus the best
    near-upright one when it is not among them).
    """
    options = options or SearchOptions()
    target_shape = tuple(target_shape)
    d = len(target_shape)
    n = bank.size
    scales = np.geomspace(options.scale_range[0], options.scale_range[1], max(1, options.scale_steps))
    if options.scale_steps == 1:
        scales = np.array([1.0])
    shapes = {s: tuple(max(4, int(round(m * bank.factor / s))) for m in target_shape) for s in scales}
    biggest = max(shapes.values(), key=lambda sh: int(np.prod(sh)))
    fshape = tuple(fft_size(m + n) for m in biggest)
    axes = tuple(range(1, d + 1))
    spectra = bank.spectra(fshape)
    angles = bank.angles
    peaks: list[tuple[float, int, float, np.ndarray]] = []  # score, orientation, scale, where (target working)
    half = max(1, n // 8)  # peaks closer than this (search pixels) are one peak
    for s in scales:
        shape = shapes[s]
        f = np.array(shape, float) / np.array(target_shape, float)  # target working -> search grid
        F = sfft.rfftn(project(bank.basis, describe_target(shape)), s=fshape, axes=axes)
        valid = tuple(slice(0, m + n - 1) for m in shape)  # correlation indices where canvas and target overlap
        for k, (Tf, scoring) in enumerate(zip(spectra, bank.factors(shape, options))):
            if scoring is None:
                continue
            factor, excluded = scoring
            score = sfft.irfftn((Tf * F).sum(0), s=fshape)[valid] * factor + excluded
            for _ in range(options.peaks_per_map):
                at = np.unravel_index(int(np.argmax(score)), score.shape)
                if not np.isfinite(score[at]):
                    break
                # index k pairs canvas pixel 0 with target pixel k - (n - 1); the canvas centre is (n - 1) / 2
                where = (np.array(at, float) - (n - 1) / 2 + 0.5) / f - 0.5
                peaks.append((float(score[at]), k, float(s), where))
                score[tuple(slice(max(0, a - half), a + half + 1) for a in at)] = -np.inf
    found = []
    for score, k, s, where in peaks:
        M = np.eye(d + 1)
        M[:d, :d] = s * bank.rotations[k]
        M[:d, d] = where - M[:d, :d] @ bank.center
        found.append(Pose(score, angles[k], s, M, bank.rotations[k]))
    found.sort(key=lambda p: -p.score)
    return distinct(found, bank, options)


def _overlap(integral: np.ndarray, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Canvas weight inside the target for every correlation index (from the weights' integral image).

    Index ``k`` puts canvas pixel ``u`` on target pixel ``u + k - (n - 1)``, so along each axis the
    canvas pixels inside the target run from ``max(0, n - 1 - k)`` to ``min(n - 1, n - 2 - k + length)``;
    the sum over that box comes from the integral image by inclusion-exclusion over its corners.
    """
    bounds = []
    for length in shape:
        k = np.arange(length + n - 1)
        bounds.append((np.maximum(0, n - 1 - k), np.minimum(n - 1, n - 2 - k + length) + 1))
    out = np.zeros(tuple(len(b[0]) for b in bounds))
    for corner in itertools.product((0, 1), repeat=len(shape)):
        sign = (-1) ** (len(shape) - sum(corner))
        out += sign * integral[np.ix_(*[bounds[axis][c] for axis, c in enumerate(corner)])]
    return out


def distinct(found: list[Pose], bank: PoseBank, options: SearchOptions) -> list[Pose]:
    """The best placements that differ in position (a quarter radius), scale (~35 %) or turn (45 degrees)."""
    chosen: list[Pose] = []
    where = [apply_affine(p.matrix, bank.center)[0] for p in found]
    picked: list[int] = []
    for i, p in enumerate(found):
        if len(chosen) >= options.candidates:
            break
        if all(np.linalg.norm(where[i] - where[j]) > 0.25 * bank.radius * min(p.scale, found[j].scale)
               or abs(np.log(p.scale / found[j].scale)) > 0.3
               or _between(p, found[j]) > 45 for j in picked):
            chosen.append(p)
            picked.append(i)
    upright = next((p for p in found if abs(p.angle) <= options.upright_deg), None)
    if upright is not None and all(upright is not p for p in chosen):
        chosen.append(upright)
    return chosen


def _between(a: Pose, b: Pose) -> float:
    """Degrees of turn between two placements."""
    if a.rotation is None or b.rotation is None:
        return abs((a.angle - b.angle + 180) % 360 - 180)
    return abs(turn_deg(a.rotation @ b.rotation.T))
