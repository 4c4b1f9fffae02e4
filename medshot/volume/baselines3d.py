"""Reference method for volumes: 3D atlas registration with SimpleITK (affine, affine + B-spline).

It returns a :class:`~medshot.volume.align3d.Correspondence3D` on the same working grids medshot
uses, so the template's label map and landmarks are carried exactly as medshot carries them and
only the correspondence differs (the reference rows of ``benchmarks/evaldata_3d.py``).
"""

from __future__ import annotations

import numpy as np

from .align3d import Correspondence3D

BASELINES_3D = ("affine", "bspline")


def _to_sitk(array: np.ndarray, spacing):
    import SimpleITK as sitk

    # SimpleITK reads numpy arrays as (z, y, x); transposing keeps its index (x, y, z) = our (i, j, k).
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def register3d(template: np.ndarray, target: np.ndarray, template_spacing, target_spacing,
               method: str = "bspline", control_spacing_mm: float = 25.0, seed: int = 1,
               threads: int | None = None, initial_voxels: np.ndarray | None = None) -> Correspondence3D:
    """Register ``template`` (moving) to ``target`` (fixed), both working volumes in [0, 1].

    ``affine``: Mattes mutual information, moments initialisation, 3 resolution levels.
    ``bspline``: the affine followed by a cubic B-spline free-form deformation with control points
    about ``control_spacing_mm`` apart (3 to 6 cells per axis), L-BFGS-B (at most 100 iterations per
    level, about 20 000 voxels sampled per metric evaluation).

    ``initial_voxels`` (4x4, target voxel -> template voxel of these grids) replaces the moments
    initialisation, e.g. medshot's global placement, to separate finding the anatomy from
    registering it. ``seed`` fixes the metric's random samples; it must be non-zero (SimpleITK
    seeds 0 from the clock, so runs would differ).
    """
    import SimpleITK as sitk

    if seed == 0:
        raise ValueError("seed must be non-zero (SimpleITK seeds 0 from the clock)")
    if method not in BASELINES_3D:
        raise ValueError(f"unknown baseline '{method}'; known: {', '.join(BASELINES_3D)}")
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    fixed, moving = _to_sitk(target, target_spacing), _to_sitk(template, template_spacing)
    if initial_voxels is None:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
    else:
        fs_, ms_ = np.asarray(target_spacing, float), np.asarray(template_spacing, float)
        # physical target -> target voxel -> template voxel -> physical template (origins are 0)
        T = np.diag([*ms_, 1.0]) @ np.asarray(initial_voxels, float) @ np.diag([*(1.0 / fs_), 1.0])
        initial = sitk.AffineTransform(T[:3, :3].ravel().tolist(), T[:3, 3].tolist())
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
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
        extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
        mesh = [int(np.clip(round(e / control_spacing_mm), 3, 6)) for e in extent]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        reg2 = sitk.ImageRegistrationMethod()
        reg2.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg2.SetMetricSamplingStrategy(reg2.RANDOM)
        # About 20 000 samples per evaluation (5 % to 25 % of the voxels): enough for a small MR crop,
        # affordable for a whole CT.
        n = float(np.prod(fixed.GetSize()))
        reg2.SetMetricSamplingPercentage(float(np.clip(20000.0 / n, 0.05, 0.25)), seed)
        reg2.SetInterpolator(sitk.sitkLinear)
        reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100,
                                  maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=200)
        reg2.SetShrinkFactorsPerLevel([2, 1])
        reg2.SetSmoothingSigmasPerLevel([1, 0])
        reg2.SetMovingInitialTransform(affine)
        reg2.SetInitialTransform(bspline, inPlace=True)
        reg2.Execute(fixed, moving)
        transform = sitk.CompositeTransform([affine, bspline])
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(),
                                              fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    disp = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3)  # (X, Y, Z, 3), mm along i, j, k
    shape = target.shape
    fs, ms = np.asarray(target_spacing, float), np.asarray(template_spacing, float)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    # fixed voxel -> fixed mm -> (+ displacement) moving mm -> moving voxel
    backward = ((grid * fs + disp) / ms).transpose(3, 0, 1, 2).astype(np.float32)
    M = _affine_matrix(affine, fs, ms)
    box = tuple(slice(0, n) for n in shape)
    # SimpleITK's transform maps target -> template; the Correspondence keeps template -> target.
    return Correspondence3D(np.linalg.inv(M), box, backward, tuple(shape), 0.0)  # type: ignore[arg-type]


def _affine_matrix(transform, fixed_spacing: np.ndarray, moving_spacing: np.ndarray) -> np.ndarray:
    """4x4 target voxel -> template voxel matrix of a SimpleITK affine-like transform (read off 4 points)."""
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    mapped = np.array([transform.TransformPoint(tuple(p * fixed_spacing)) for p in pts]) / moving_spacing
    M = np.eye(4)
    M[:3, :3] = (mapped[1:] - mapped[0]).T
    M[:3, 3] = mapped[0]
    return M
