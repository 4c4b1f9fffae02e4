"""Synthetic test cases with exact ground truth: a textured phantom and known warps of it.

Used by ``medshot demo`` (which must work offline with nothing but the package) and by the tests.
The phantom looks like an axial slice: a body outline, two organ-like blobs (labels 1 and 2), a
bright ring (bone), a few small bright dots (landmarks) and a smooth random texture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Case:
    image: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) uint8 labels
    landmarks_xy: np.ndarray  # (N, 2)


LANDMARK_NAMES = ("apex", "left notch", "right notch", "base")


def _ellipse(shape, cx, cy, rx, ry, angle=0.0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    a = np.deg2rad(angle)
    u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def make_phantom(shape: tuple[int, int] = (192, 224), seed: int = 0) -> Case:
    """A phantom with two labelled organs and four landmarks (all positions scale with ``shape``)."""
    H, W = shape
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float64)
    body = _ellipse(shape, W * 0.5, H * 0.5, W * 0.42, H * 0.40)
    img[body] = 0.35
    ring = _ellipse(shape, W * 0.5, H * 0.47, W * 0.34, H * 0.32) & ~_ellipse(shape, W * 0.5, H * 0.47, W * 0.31,
                                                                               H * 0.29)
    img[ring] = 0.9
    organ1 = _ellipse(shape, W * 0.37, H * 0.50, W * 0.09, H * 0.13, 20)
    organ2 = _ellipse(shape, W * 0.63, H * 0.45, W * 0.11, H * 0.08, -15)
    img[organ1] = 0.6
    img[organ2] = 0.15
    spine = _ellipse(shape, W * 0.5, H * 0.80, W * 0.05, H * 0.04)
    img[spine] = 0.95
    lms = np.array([[W * 0.5, H * 0.16], [W * 0.33, H * 0.30], [W * 0.67, H * 0.28], [W * 0.5, H * 0.72]])
    for x, y in lms:
        # A bright dot in a dark halo: a landmark is a point one can actually tell apart from its
        # surroundings (a plain dot on the bright ring would be ambiguous along the ring).
        img[_ellipse(shape, x, y, max(3.0, W * 0.03), max(3.0, H * 0.03))] = 0.05
        img[_ellipse(shape, x, y, max(1.5, W * 0.012), max(1.5, H * 0.012))] = 1.0
    texture = ndimage.gaussian_filter(rng.normal(size=shape), max(1.0, min(H, W) / 60))
    texture /= np.abs(texture).max() + 1e-9
    img = ndimage.gaussian_filter(img, 0.8) + 0.06 * texture * body
    mask = np.zeros(shape, np.uint8)
    mask[organ1] = 1
    mask[organ2] = 2
    return Case(np.clip(img, 0, 1).astype(np.float32), mask, lms)


def random_warp(case: Case, seed: int = 1, max_rotation: float = 15.0, scale_range=(0.77, 1.3),
                max_shift: float = 0.12, deformation: float = 0.02, out_shape: tuple[int, int] | None = None,
                noise: float = 0.02) -> tuple[Case, np.ndarray]:
    """Warp a case with a random similarity transform plus a smooth deformation.

    Returns the warped case (image, mask, landmarks exactly transformed) and the 3x3 affine part
    (source ``(x, y, 1)`` -> target). ``deformation`` is the displacement amplitude as a fraction of the
    image side; ``max_shift`` likewise for translation.
    """
    rng = np.random.default_rng(seed)
    H, W = case.image.shape
    Ho, Wo = out_shape or (H, W)
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    shift = rng.uniform(-max_shift, max_shift, 2) * np.array([Wo, Ho])
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    src_c = np.array([(W - 1) / 2, (H - 1) / 2])
    dst_c = np.array([(Wo - 1) / 2, (Ho - 1) / 2]) + shift
    A = np.array([[c, -s], [s, c]])
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = dst_c - A @ src_c
    Minv = np.linalg.inv(M)
    # Smooth displacement field on the target grid (applied before the inverse affine).
    amp = deformation * max(Ho, Wo)
    sigma = max(Ho, Wo) / 6
    dx = ndimage.gaussian_filter(rng.normal(size=(Ho, Wo)), sigma)
    dy = ndimage.gaussian_filter(rng.normal(size=(Ho, Wo)), sigma)
    norm = max(np.abs(dx).max(), np.abs(dy).max(), 1e-9)
    dx, dy = dx / norm * amp, dy / norm * amp
    yy, xx = np.mgrid[0:Ho, 0:Wo].astype(np.float64)
    px, py = xx + dx, yy + dy
    sx = Minv[0, 0] * px + Minv[0, 1] * py + Minv[0, 2]
    sy = Minv[1, 0] * px + Minv[1, 1] * py + Minv[1, 2]
    image = ndimage.map_coordinates(case.image, [sy, sx], order=1, mode="constant", cval=0.0)
    image = image + noise * rng.normal(size=image.shape)
    mask = ndimage.map_coordinates(case.mask, [sy, sx], order=0, mode="constant", cval=0)
    # Landmarks: invert the pull map (target t -> source) numerically by nearest grid point + Newton.
    lms = np.array([_invert(sx, sy, p) for p in case.landmarks_xy])
    return Case(np.clip(image, 0, 1).astype(np.float32), mask.astype(np.uint8), lms), M


def swirl(case: Case, degrees: float, seed: int = 0, radius: float = 0.3, noise: float = 0.02) -> Case:
    """The case with its centre turned by ``degrees`` and its edge not at all (a swirl: the turn falls off as
    ``exp(-r^2)``, ``r`` in units of ``radius`` x the image side). Steps of a few tens of degrees are small
    deformations; a large total is beyond what one registration recovers (batch mode's chain test).
    """
    H, W = case.image.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    cy, cx = (H - 1) / 2, (W - 1) / 2
    r2 = ((yy - cy) / (radius * H)) ** 2 + ((xx - cx) / (radius * W)) ** 2
    a = -np.deg2rad(degrees) * np.exp(-r2)
    sy = cy + (yy - cy) * np.cos(a) - (xx - cx) * np.sin(a)
    sx = cx + (yy - cy) * np.sin(a) + (xx - cx) * np.cos(a)
    image = ndimage.map_coordinates(case.image, [sy, sx], order=1, mode="constant", cval=0.0)
    image = image + noise * np.random.default_rng(seed).normal(size=image.shape)
    mask = ndimage.map_coordinates(case.mask, [sy, sx], order=0, mode="constant", cval=0)
    lms = np.array([_invert(sx, sy, p) for p in case.landmarks_xy])
    return Case(np.clip(image, 0, 1).astype(np.float32), mask.astype(np.uint8), lms)


def _invert(sx: np.ndarray, sy: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = (sx - p[0]) ** 2 + (sy - p[1]) ** 2
    iy, ix = np.unravel_index(int(np.argmin(d)), d.shape)
    t = np.array([ix, iy], float)
    H, W = sx.shape
    for _ in range(10):
        f = np.array([ndimage.map_coordinates(a, [[t[1]], [t[0]]], order=1, mode="nearest")[0] for a in (sx, sy)])
        jx = np.array([ndimage.map_coordinates(a, [[t[1]], [min(t[0] + 1, W - 1)]], order=1, mode="nearest")[0]
                       for a in (sx, sy)]) - f
        jy = np.array([ndimage.map_coordinates(a, [[min(t[1] + 1, H - 1)], [t[0]]], order=1, mode="nearest")[0]
                       for a in (sx, sy)]) - f
        step = np.linalg.solve(np.stack([jx, jy], 1), p - f)
        t = t + step
        if np.hypot(*step) < 1e-4:
            break
    return t


def place(case: Case, angle_deg: float = 0.0, scale: float = 1.0, out_shape: tuple[int, int] | None = None,
          center_xy: tuple[float, float] | None = None, noise: float = 0.02, seed: int = 0) -> Case:
    """The case turned by ``angle_deg``, scaled by ``scale`` and centred at ``center_xy`` of a new canvas.

    Exact: the mask is resampled with nearest labels and the landmarks mapped by the same similarity.
    """
    H, W = case.image.shape
    Ho, Wo = out_shape or (H, W)
    cx, cy = center_xy if center_xy is not None else ((Wo - 1) / 2, (Ho - 1) / 2)
    a = np.deg2rad(angle_deg)
    A = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src_c = np.array([(W - 1) / 2, (H - 1) / 2])
    t = np.array([cx, cy]) - A @ src_c
    Ainv = np.linalg.inv(A)
    yy, xx = np.mgrid[0:Ho, 0:Wo].astype(np.float64)
    sx = Ainv[0, 0] * (xx - t[0]) + Ainv[0, 1] * (yy - t[1])
    sy = Ainv[1, 0] * (xx - t[0]) + Ainv[1, 1] * (yy - t[1])
    image = ndimage.map_coordinates(case.image, [sy, sx], order=1, mode="constant", cval=0.0)
    image = image + noise * np.random.default_rng(seed).normal(size=image.shape)
    mask = ndimage.map_coordinates(case.mask, [sy, sx], order=0, mode="constant", cval=0)
    lms = case.landmarks_xy @ A.T + t
    return Case(np.clip(image, 0, 1).astype(np.float32), mask.astype(np.uint8), lms)


def ultrasound_frame(case: Case, apex_xy: tuple[float, float] | None = None, half_angle_deg: float = 38.0,
                     text: bool = True) -> Case:
    """The case seen through an ultrasound-like acquisition frame: speckled tissue inside a fan-shaped
    sector and black outside it, bright burnt-in text blocks in a corner and calibration ticks along
    one side (labels and landmarks unchanged; callers keep the structure inside the fan)."""
    H, W = case.image.shape
    ax, ay = apex_xy if apex_xy is not None else ((W - 1) / 2, -0.15 * H)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    angle = np.degrees(np.arctan2(xx - ax, yy - ay))
    radius = np.hypot(xx - ax, yy - ay)
    fan = (np.abs(angle) <= half_angle_deg) & (radius <= 1.05 * H - ay) & (radius >= 0.2 * H)
    speckle = ndimage.gaussian_filter(np.random.default_rng(3).rayleigh(size=(H, W)), 1.0)
    tissue = 0.25 * speckle / speckle.mean()
    image = np.where(fan, np.maximum(case.image, tissue), 0.0)
    if text:
        rng = np.random.default_rng(7)
        for row in range(3):  # three lines of blocky "characters" in the top-left corner
            for col in range(6):
                if rng.random() < 0.75:
                    y0, x0 = int(0.03 * H) + row * max(4, int(0.05 * H)), int(0.02 * W) + col * max(3, int(0.035 * W))
                    image[y0: y0 + max(2, int(0.03 * H)), x0: x0 + max(2, int(0.02 * W))] = 1.0
        for k in range(8):  # calibration ticks along the right edge
            y0 = int((0.15 + 0.09 * k) * H)
            image[y0: y0 + 2, W - max(6, int(0.04 * W)): W - 2] = 1.0
    return Case(image.astype(np.float32), case.mask.copy(), case.landmarks_xy.copy())
