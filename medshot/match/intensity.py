"""Intensity-based registration with SimpleITK, for the candidates and refinements that use it.

Mutual-information affine registration is one of the candidate correspondences (it needs no
descriptors and holds where the whole field of view shows the same anatomy), and symmetric-forces
demons can refine the chosen affine. The reference baselines (:mod:`medshot.evaluation.baselines`) use
the same builders.

SimpleITK indexes images as (x, y[, z]) = the array axes reversed; everything returned here is
array order like the rest of :mod:`medshot.match`, for images of any dimension. ITK runs single-threaded and its random
sampling is seeded, so results repeat exactly.
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy import ndimage

from ..core.geometry import grid_coords, level_shape, resample_field, resize_image, scale_matrix


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
    """Symmetric-forces demons displacement field of an affinely aligned pair.

    The field is in SimpleITK order (x, y[, z]) and in target pixels.

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


def affine_array_order(transform, ndim: int = 2) -> np.ndarray:
    """``(ndim + 1, ndim + 1)`` matrix of a SimpleITK affine-like transform, in array order.

    SimpleITK's points are (x, y[, z]) = array axes reversed; the matrix is read off the images of
    the origin and the unit vectors (unit spacing, origin 0, identity direction).
    """
    pts = np.vstack([np.zeros(ndim), np.eye(ndim)])
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    xyz = np.eye(ndim + 1)
    xyz[:ndim, :ndim] = (mapped[1:] - mapped[0]).T
    xyz[:ndim, ndim] = mapped[0]
    reverse = np.eye(ndim + 1)
    reverse[:ndim, :ndim] = np.eye(ndim)[::-1]
    return reverse @ xyz @ reverse


class Levels:
    """Template and target shrunk so that their longest side is at most ``side``, with the scalings.

    Intensity registration gains little from more pixels than that and costs in proportion to them.
    """

    def __init__(self, template: np.ndarray, target: np.ndarray, side: int):
        t_shape, _ = level_shape(template.shape, side)
        s_shape, _ = level_shape(target.shape, side)
        self.template, self.target = resize_image(template, t_shape), resize_image(target, s_shape)
        self.t = scale_matrix(np.array(t_shape, float) / np.array(template.shape, float))
        self.s = scale_matrix(np.array(s_shape, float) / np.array(target.shape, float))

    def to_work(self, matrix: np.ndarray) -> np.ndarray:
        """A level affine (template level -> target level) on the working grids."""
        return np.linalg.inv(self.s) @ matrix @ self.t

    def to_level(self, matrix: np.ndarray) -> np.ndarray:
        return self.s @ matrix @ np.linalg.inv(self.t)


def intensity_affine(template: np.ndarray, target: np.ndarray, seed: int = 1, side: int = 128) -> np.ndarray:
    """Template -> target affine ``(ndim + 1, ndim + 1)`` (array order) by Mattes-MI registration of two
    ``(M, N[, P])`` images."""
    levels = Levels(template, target, side)
    with single_threaded():
        transform = mattes_affine(to_sitk(levels.target), to_sitk(levels.template), seed)
    return levels.to_work(np.linalg.inv(affine_array_order(transform, template.ndim)))


def demons_backward(template: np.ndarray, target: np.ndarray, matrix: np.ndarray, side: int = 128,
                   box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Backward field ``(ndim, M, N[, P])`` (array order) of demons started from the affine ``matrix``.

    ``matrix`` maps template points to target points (array order); the returned field gives, for
    each target pixel, its position on the template's grid. Demons runs on ``box`` of the target
    (default all of it), resampled to at most ``side`` pixels a side when larger; outside the box
    the affine holds.
    """
    backward = grid_coords(np.linalg.inv(matrix), target.shape)
    box = box or tuple(slice(0, n) for n in target.shape)
    sub = target[box]
    shape, _ = level_shape(sub.shape, side)
    d = target.ndim
    to_level = scale_matrix(np.array(shape, float) / np.array(sub.shape, float))
    to_level[:d, d] -= to_level[:d, :d] @ np.array([b.start for b in box], float)  # target working -> level
    field = _demons_backward(template, resize_image(sub, shape), to_level @ matrix)
    backward[(slice(None), *box)] = resample_field(field, sub.shape)
    return backward


def _demons_backward(template: np.ndarray, target: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Demons on ``target`` against the template pulled onto its grid through ``matrix`` (template -> target)."""
    import SimpleITK as sitk

    d = target.ndim
    backward_affine = np.linalg.inv(matrix)
    step = float(abs(np.linalg.det(backward_affine[:d, :d])) ** (1 / d))  # template pixels per target pixel
    template = np.asarray(template, np.float32)
    if step > 1.5:  # the target grid is coarser: smooth first, as any downsampling should
        template = ndimage.gaussian_filter(template, 0.5 * (step - 1), mode="nearest")
    affine_field = grid_coords(backward_affine, target.shape)
    moved = ndimage.map_coordinates(template, affine_field, order=1, mode="nearest")
    with single_threaded():
        field = demons_field(to_sitk(target), to_sitk(moved))
    disp = sitk.GetArrayFromImage(field)[..., ::-1]  # (*shape, d): SimpleITK's (x, y[, z]) reversed
    at = np.indices(target.shape, dtype=np.float64) + np.moveaxis(disp, -1, 0)
    return np.stack([ndimage.map_coordinates(c, at, order=1, mode="nearest") for c in affine_field])
