"""Reference methods: atlas registration (identity, affine, demons, B-spline with SimpleITK; SyN with ANTs).

Each returns a backward field and an affine on the same working grids medshot uses, so the
template's mask and landmarks are carried exactly as medshot carries them and only the
correspondence differs. Coordinates are array order (row, col).
"""

from __future__ import annotations

import numpy as np

from .match.intensity import affine_array_order, demons_field, mattes_affine, single_threaded, to_sitk

BASELINES = ("identity", "affine", "demons", "bspline", "syn")


def baseline_status(name: str) -> tuple[bool, str]:
    """Whether a baseline can run here, and why not (``syn`` needs the optional ``antspyx``)."""
    if name == "syn":
        try:
            import ants  # noqa: F401
        except ImportError:
            return False, "ANTs SyN needs the optional package antspyx (pip install antspyx)"
    return True, "available"


def register(template: np.ndarray, target: np.ndarray, method: str = "bspline",
             mesh_size: int = 8, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Register ``template`` (moving) to ``target`` (fixed), both ``(H, W)`` in [0, 1].

    Returns the backward field ``(2, H, W)`` (for each target pixel, its template position,
    row/col) and the affine part ``(3, 3)`` mapping template (row, col, 1) to target.

    ``identity`` maps the template's pixel grid onto the target's by scaling (same field of view);
    ``affine`` adds a Mattes mutual-information affine registration (3 resolution levels);
    ``demons`` follows the affine with symmetric-forces demons on histogram-matched intensities
    (two resolution levels); ``bspline`` follows it with a B-spline free-form deformation
    (``mesh_size`` control cells per side, L-BFGS-B); ``syn`` is ANTs' symmetric normalisation
    (affine + SyN, its default settings).

    Runs are reproducible: the metric's random sampling uses ``seed`` (SimpleITK reads 0 as "seed
    from the clock", so it must be non-zero) and ITK runs single-threaded, because its
    multi-threaded B-spline metric sums in a varying order.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline '{method}'; known: {', '.join(BASELINES)}")
    Ht, Wt = template.shape
    Hs, Ws = target.shape
    if method == "identity":
        yy, xx = np.mgrid[0:Hs, 0:Ws].astype(np.float64)
        backward = np.stack([(yy + 0.5) * Ht / Hs - 0.5, (xx + 0.5) * Wt / Ws - 0.5])
        M = np.array([[Hs / Ht, 0, 0.5 * Hs / Ht - 0.5], [0, Ws / Wt, 0.5 * Ws / Wt - 0.5], [0, 0, 1.0]])
        return backward, M
    if method == "syn":
        return _register_syn(template, target)
    with single_threaded():
        return _register(template, target, method, mesh_size, seed)


def _register(template: np.ndarray, target: np.ndarray, method: str, mesh_size: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    Hs, Ws = target.shape
    fixed, moving = to_sitk(target), to_sitk(template)
    affine = mattes_affine(fixed, moving, seed)
    transform = affine
    if method == "bspline":
        bspline = sitk.BSplineTransformInitializer(fixed, [mesh_size, mesh_size], order=3)
        reg2 = sitk.ImageRegistrationMethod()
        reg2.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg2.SetMetricSamplingStrategy(reg2.RANDOM)
        reg2.SetMetricSamplingPercentage(0.25, seed)
        reg2.SetInterpolator(sitk.sitkLinear)
        reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100)
        reg2.SetShrinkFactorsPerLevel([2, 1])
        reg2.SetSmoothingSigmasPerLevel([1, 0])
        reg2.SetMovingInitialTransform(affine)
        reg2.SetInitialTransform(bspline, inPlace=True)
        reg2.Execute(fixed, moving)
        transform = sitk.CompositeTransform([affine, bspline])
    elif method == "demons":
        moved = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0)
        field = demons_field(fixed, moved)
        transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(),
                                              fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    disp = sitk.GetArrayFromImage(field)  # (Hs, Ws, 2) as (dx, dy)
    yy, xx = np.mgrid[0:Hs, 0:Ws].astype(np.float64)
    backward = np.stack([yy + disp[..., 1], xx + disp[..., 0]])
    # SimpleITK's transform maps target -> template; the affine returned maps template -> target.
    return backward, np.linalg.inv(affine_array_order(affine))


def _register_syn(template: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ANTs SyN; the backward map is read off by warping images of the template's own coordinates.

    ANTs takes no seed here; with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` in the environment its
    results repeat.
    """
    import ants

    Hs, Ws = target.shape
    Ht, Wt = template.shape
    fixed = ants.from_numpy(np.ascontiguousarray(target, np.float32))
    moving = ants.from_numpy(np.ascontiguousarray(template, np.float32))
    reg = ants.registration(fixed, moving, type_of_transform="SyN")
    ty, tx = np.mgrid[0:Ht, 0:Wt].astype(np.float32)
    backward = np.stack([
        ants.apply_transforms(fixed, ants.from_numpy(c), reg["fwdtransforms"], interpolator="linear").numpy()
        for c in (ty, tx)
    ]).astype(np.float64)
    return backward, affine_of_field(backward)


def affine_of_field(backward: np.ndarray) -> np.ndarray:
    """Least-squares template -> target affine ``(3, 3)`` (row, col) of a backward field ``(2, H, W)``."""
    H, W = backward.shape[1:]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    src = np.stack([backward[0].ravel(), backward[1].ravel(), np.ones(H * W)], 1)
    dst = np.stack([yy.ravel(), xx.ravel()], 1)
    sol, *_ = np.linalg.lstsq(src, dst, rcond=None)
    return np.vstack([sol.T, [0, 0, 1.0]])
