"""Reference methods: atlas registration with SimpleITK (identity, affine, affine + B-spline).

Each returns a :class:`~medshot.match.Correspondence` on the same working grids medshot uses, so
the template's mask and landmarks are carried exactly as medshot carries them and only the
correspondence differs.
"""

from __future__ import annotations

import numpy as np

from .match.align import Correspondence

BASELINES = ("identity", "affine", "bspline")


def _to_sitk(array: np.ndarray):
    import SimpleITK as sitk

    return sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))


def register(template: np.ndarray, target: np.ndarray, method: str = "bspline",
             mesh_size: int = 8, seed: int = 1) -> Correspondence:
    """Register ``template`` (moving) to ``target`` (fixed), both ``(H, W)`` in [0, 1].

    ``identity`` maps the template's pixel grid onto the target's by scaling (same field of view);
    ``affine`` adds a Mattes mutual-information affine registration (3 resolution levels);
    ``bspline`` follows the affine with a B-spline free-form deformation (``mesh_size`` control
    cells per side, L-BFGS-B).

    Runs are reproducible: the metric's random sampling uses ``seed`` (SimpleITK reads 0 as "seed
    from the clock", so it must be non-zero) and ITK runs single-threaded, because its
    multi-threaded B-spline metric sums in a varying order.
    """
    import SimpleITK as sitk

    if method not in BASELINES:
        raise ValueError(f"unknown baseline '{method}'; known: {', '.join(BASELINES)}")
    Ht, Wt = template.shape
    Hs, Ws = target.shape
    if method == "identity":
        yy, xx = np.mgrid[0:Hs, 0:Ws].astype(np.float64)
        backward = np.stack([(yy + 0.5) * Ht / Hs - 0.5, (xx + 0.5) * Wt / Ws - 0.5])
        M = np.array([[Ws / Wt, 0, 0.5 * Ws / Wt - 0.5], [0, Hs / Ht, 0.5 * Hs / Ht - 0.5], [0, 0, 1.0]])
        return Correspondence(backward, M, 0.0)

    if seed == 0:
        raise ValueError("seed must be non-zero (SimpleITK seeds 0 from the clock)")
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _register(template, target, method, mesh_size, seed)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _register(template: np.ndarray, target: np.ndarray, method: str, mesh_size: int, seed: int) -> Correspondence:
    import SimpleITK as sitk

    Hs, Ws = target.shape
    fixed, moving = _to_sitk(target), _to_sitk(template)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(initial, inPlace=False)
    affine = reg.Execute(fixed, moving)
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
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(),
                                              fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    disp = sitk.GetArrayFromImage(field)  # (Hs, Ws, 2) as (dx, dy)
    yy, xx = np.mgrid[0:Hs, 0:Ws].astype(np.float64)
    backward = np.stack([yy + disp[..., 1], xx + disp[..., 0]])
    # SimpleITK's transform maps target -> template; the Correspondence keeps template -> target.
    return Correspondence(backward, np.linalg.inv(_affine_matrix(affine)), 0.0)


def _affine_matrix(transform) -> np.ndarray:
    """3x3 matrix (x, y) of a SimpleITK affine-like transform, read off three mapped points."""
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    A = np.stack([mapped[1] - mapped[0], mapped[2] - mapped[0]], axis=1)
    return np.array([[A[0, 0], A[0, 1], mapped[0, 0]], [A[1, 0], A[1, 1], mapped[0, 1]], [0, 0, 1.0]])
