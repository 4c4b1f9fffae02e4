"""Intensity-based registration with SimpleITK, for the candidates and refinements that use it.

Mutual-information affine registration is one of the candidate correspondences (it needs no
descriptors and holds where the whole field of view shows the same anatomy), and symmetric-forces
demons can refine the chosen affine. The reference baselines (:mod:`medshot.baselines`) use the
same builders.

SimpleITK indexes images as (x = column, y = row); everything returned here is array order
(row, col) like the rest of :mod:`medshot.match`. ITK runs single-threaded and its random
sampling is seeded, so results repeat exactly.
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy import ndimage

_SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def to_sitk(array: np.ndarray):
    import SimpleITK as sitk

    return sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))


@contextlib.contextmanager
def single_threaded():
    """ITK's multi-threaded metrics sum in a varying order; one thread makes runs repeat exactly."""
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def mattes_affine(fixed, moving, seed: int = 1, initial=None):
    """SimpleITK affine (Mattes MI, 3 levels) of ``moving`` onto ``fixed``: a transform target -> template.

    ``initial`` (a SimpleITK transform, target -> template) starts the optimiser; without it the
    images' intensity moments align the centres. ``seed`` must be non-zero (0 seeds from the clock).
    """
    import SimpleITK as sitk

    if seed == 0:
        raise ValueError("seed must be non-zero (SimpleITK seeds 0 from the clock)")
    if initial is None:
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(fixed.GetDimension()),
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
    return reg.Execute(fixed, moving)


def demons_field(fixed, moving_resampled, iterations: int = 60, sigma: float = 1.5):
    """Symmetric-forces demons displacement field (x, y; target pixels) of an affinely aligned pair.

    Histogram matching first (demons compares intensities directly), then a coarse level at half
    resolution whose field starts the full-resolution level.
    """
    import SimpleITK as sitk

    matcher = sitk.HistogramMatchingImageFilter()
    matcher.SetNumberOfHistogramLevels(64)
    matcher.SetNumberOfMatchPoints(7)
    matcher.ThresholdAtMeanIntensityOn()
    moving_matched = matcher.Execute(moving_resampled, fixed)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(sigma)
    dim = fixed.GetDimension()
    if min(fixed.GetSize()) >= 16:
        small_fixed = sitk.Shrink(fixed, [2] * dim)
        small_moving = sitk.Shrink(moving_matched, [2] * dim)
        coarse = demons.Execute(sitk.SmoothingRecursiveGaussian(small_fixed, 0.5),
                                sitk.SmoothingRecursiveGaussian(small_moving, 0.5))
        initial = sitk.Resample(coarse, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, coarse.GetPixelID())
        return demons.Execute(fixed, moving_matched, initial)
    return demons.Execute(fixed, moving_matched)


def affine_array_order(transform) -> np.ndarray:
    """``(3, 3)`` matrix of a 2D SimpleITK affine-like transform (x, y), in array order (row, col)."""
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    A = np.stack([mapped[1] - mapped[0], mapped[2] - mapped[0]], axis=1)
    xy = np.array([[A[0, 0], A[0, 1], mapped[0, 0]], [A[1, 0], A[1, 1], mapped[0, 1]], [0, 0, 1.0]])
    return _SWAP @ xy @ _SWAP


def intensity_affine(template: np.ndarray, target: np.ndarray, seed: int = 1) -> np.ndarray:
    """Template -> target affine ``(3, 3)`` (array order) by Mattes-MI registration of two ``(H, W)`` images."""
    with single_threaded():
        transform = mattes_affine(to_sitk(target), to_sitk(template), seed)
    return np.linalg.inv(affine_array_order(transform))


def demons_backward(template: np.ndarray, target: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Backward field ``(2, H, W)`` (array order) of demons started from the affine ``matrix``.

    ``matrix`` maps template points to target points (array order); the returned field gives, for
    each target pixel, its position on the template's grid.
    """
    import SimpleITK as sitk

    H, W = target.shape
    backward_affine = np.linalg.inv(matrix)  # target -> template
    yy, xx = np.indices((H, W), dtype=np.float64)
    ay = backward_affine[0, 0] * yy + backward_affine[0, 1] * xx + backward_affine[0, 2]
    ax = backward_affine[1, 0] * yy + backward_affine[1, 1] * xx + backward_affine[1, 2]
    moved = ndimage.map_coordinates(np.asarray(template, np.float32), [ay, ax], order=1, mode="nearest")
    with single_threaded():
        field = demons_field(to_sitk(target), to_sitk(moved))
    disp = sitk.GetArrayFromImage(field)  # (H, W, 2) as (dx, dy), target pixels
    py, px = yy + disp[..., 1], xx + disp[..., 0]
    return np.stack([ndimage.map_coordinates(ay, [py, px], order=1, mode="nearest"),
                     ndimage.map_coordinates(ax, [py, px], order=1, mode="nearest")])
