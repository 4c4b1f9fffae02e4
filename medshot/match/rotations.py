"""The orientations the pose search tries, and how far a linear map turns: what differs between 2D and 3D.

In 2D the search covers the full circle (fetal heads turn through 360 degrees in ultrasound). In
3D a full sphere of orientations would cost thousands of correlations; volumes come from scanners
whose patient axes are known (and medshot reorients them to RAS+ on reading), so the search tries
no turn and small turns about each axis.
"""

from __future__ import annotations

import numpy as np


def rotation(ndim: int, axis: int, angle_deg: float) -> np.ndarray:
    """``(ndim, ndim)`` rotation by ``angle_deg`` in the plane of the two axes other than ``axis``
    (in 2D, ``axis`` is ignored: the plane of the image)."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    R = np.eye(ndim)
    i, j = (0, 1) if ndim == 2 else [k for k in range(3) if k != axis]
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def candidates(ndim: int, step_deg: float = 15.0, max_2d_deg: float = 180.0,
               max_3d_deg: float = 10.0) -> list[np.ndarray]:
    """The rotations of the pose bank, as ``(ndim, ndim)`` matrices.

    2D: every ``step_deg`` from -180 up to (not including) 180 with ``|angle| <= max_2d_deg``.
    3D: none, then +-``max_3d_deg`` about each axis.
    """
    if ndim == 2:
        angles = np.arange(-180.0, 180.0, step_deg)
        angles = angles[np.abs(angles) <= max_2d_deg + 1e-9]
        return [rotation(2, 0, a) for a in (angles if len(angles) else [0.0])]
    out = [np.eye(ndim)]
    if max_3d_deg > 0:
        out += [rotation(ndim, axis, sign * max_3d_deg) for axis in range(ndim) for sign in (-1, 1)]
    return out


def turn_deg(linear: np.ndarray) -> float:
    """How far a linear map turns, in degrees (the rotation of its polar decomposition); signed in 2D."""
    u, _, vt = np.linalg.svd(np.asarray(linear, float))
    R = u @ vt
    if R.shape == (2, 2):
        return float(np.degrees(np.arctan2(R[1, 0], R[0, 0])))
    cos = (np.trace(R) - (R.shape[0] - 2)) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
