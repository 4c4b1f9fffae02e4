"""Reference methods: atlas registration (identity, affine, demons, B-spline with SimpleITK; SyN with ANTs).

Each returns a backward field and an affine on the working grids medshot uses, so the template's
mask and landmarks are carried exactly as medshot carries them and only the correspondence
differs. Written once for 2D images and volumes (``AffineTransform(ndim)``, a B-spline mesh per
axis); coordinates are array order. The SimpleITK builders are medshot's own
(:mod:`medshot.match.intensity`), which also uses them as candidates.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..core.geometry import grid_coords, scale_matrix
from ..match.intensity import affine_array_order, demons_field, mattes_affine, single_threaded, to_sitk

BASELINES = ("identity", "affine", "demons", "bspline", "syn")


def baseline_status(name: str) -> tuple[bool, str]:
    """Whether a baseline can run here, and why not (``syn`` needs the optional ``antspyx``)."""
    if name not in BASELINES:
        return False, f"unknown baseline (known: {', '.join(BASELINES)})"
    if name == "syn":
        try:
            import ants  # noqa: F401
        except ImportError:
            return False, "ANTs SyN needs the optional package antspyx (pip install antspyx)"
    return True, "available"


def register(template: np.ndarray, target: np.ndarray, method: str = "bspline",
             mesh_size: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Register ``template`` (moving) to ``target`` (fixed), both ``(M, N[, P])`` in [0, 1].

    Returns the backward field ``(ndim, *target.shape)`` (for each target pixel, its template
    position) and the affine part mapping template indices to target indices (homogeneous).

    ``identity`` maps the template's grid onto the target's by scaling (same field of view);
    ``affine`` is a Mattes mutual-information affine registration (3 resolution levels);
    ``demons`` follows it with symmetric-forces demons on histogram-matched intensities (two
    levels); ``bspline`` follows it with a B-spline free-form deformation (``mesh_size`` control
    cells per axis, L-BFGS-B); ``syn`` is ANTs' symmetric normalisation (affine + SyN, its defaults).

    Runs are reproducible: the metric's random sampling uses ``seed`` (SimpleITK reads 0 as "seed
    from the clock", so it must be non-zero) and ITK runs single-threaded, because its
    multi-threaded metrics sum in a varying order.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline '{method}'; known: {', '.join(BASELINES)}")
    if method == "identity":
        M = scale_matrix(np.array(target.shape, float) / np.array(template.shape, float))
        return grid_coords(np.linalg.inv(M), target.shape), M
    if method == "syn":
        return _register_syn(template, target)
    with single_threaded():
        return _register(template, target, method, mesh_size, seed)


def run_baseline(shot, target, method: str, landmarks: bool = True, masks: bool = True):
    """A template's annotations carried to ``target`` by a baseline registration instead of medshot's.

    ``shot`` is a :class:`medshot.pipeline.OneShot`; the registration runs on the grids medshot
    matches on and the annotations are carried exactly as medshot carries them, with no landmark
    re-matching, segmenter or scores. Returns a :class:`medshot.pipeline.TargetResult`.
    """
    stage, prepared, corr = shot.baseline_correspondence(target, partial(register, method=method))
    return shot.carry(stage, prepared, corr, landmarks, masks, refine=False)


def _register(template: np.ndarray, target: np.ndarray, method: str, mesh_size: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    d = target.ndim
    fixed, moving = to_sitk(target), to_sitk(template)
    affine = mattes_affine(fixed, moving, seed)
    transform = affine
    if method == "bspline":
        bspline = sitk.BSplineTransformInitializer(fixed, [mesh_size] * d, order=3)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.25, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100)
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1, 0])
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bspline, inPlace=True)
        reg.Execute(fixed, moving)
        transform = sitk.CompositeTransform([affine, bspline])
    elif method == "demons":
        moved = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0)
        transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(demons_field(fixed, moved))])
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(),
                                              fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    disp = sitk.GetArrayFromImage(field)[..., ::-1]  # (*shape, d): SimpleITK's (x, y[, z]) reversed
    backward = np.indices(target.shape, dtype=np.float64) + np.moveaxis(disp, -1, 0)
    # SimpleITK's transform maps target -> template; the affine returned maps template -> target.
    return backward, np.linalg.inv(affine_array_order(affine, d))


def _register_syn(template: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ANTs SyN; the backward field is read off by warping images of the template's own coordinates.

    ANTs takes no seed here; with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` in the environment its
    results repeat.
    """
    import ants

    fixed = ants.from_numpy(np.ascontiguousarray(target, np.float32))
    moving = ants.from_numpy(np.ascontiguousarray(template, np.float32))
    reg = ants.registration(fixed, moving, type_of_transform="SyN")
    coords = np.indices(template.shape, dtype=np.float32)
    backward = np.stack([ants.apply_transforms(fixed, ants.from_numpy(c), reg["fwdtransforms"],
                                               interpolator="linear").numpy() for c in coords]).astype(np.float64)
    return backward, affine_of_field(backward)


def affine_of_field(backward: np.ndarray) -> np.ndarray:
    """Least-squares template -> target affine (homogeneous, array order) of a backward field ``(ndim, ...)``."""
    d = backward.shape[0]
    target = np.indices(backward.shape[1:], dtype=np.float64).reshape(d, -1).T
    source = np.column_stack([backward.reshape(d, -1).T, np.ones(len(target))])
    sol, *_ = np.linalg.lstsq(source, target, rcond=None)
    return np.vstack([sol.T, np.eye(d + 1)[d]])
