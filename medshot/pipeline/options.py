"""Default correspondence settings per dimension.

2D settings were chosen on the tune half of the development data (``benchmarks/tune_2d.py``,
``docs/method.md``). Volume settings carry over those of medshot's first 3D pipeline (small turns,
a narrow scale range: volumes are reoriented to RAS+ and compared at one physical voxel size), on
grids of a few tens of voxels a side, since every 3D step costs the cube of a 2D one. Since 3D
candidates turn little, the template's descriptors are resampled rather than computed again where the
refinement grids are much coarser than the working grid (``redescribe=None``; docs/volumes.md).
"""

from __future__ import annotations

from ..match.correspond import CorrespondOptions
from ..match.refine import RefineOptions
from ..match.search import SearchOptions


def default_options(ndim: int) -> CorrespondOptions:
    """The default :class:`CorrespondOptions` for images of ``ndim`` dimensions."""
    if ndim == 2:
        return CorrespondOptions()
    return CorrespondOptions(
        search=SearchOptions(scale_range=(0.85, 1.18), scale_steps=3, max_angle_3d_deg=10.0, coarse_side=40,
                             channels=16, min_overlap=0.6, candidates=2),
        refine=RefineOptions(affine_side=48, affine_radius=2, affine_iterations=3, deform_side=48,
                             deform_iterations=6, deform_radius=1, smoothing=2.0 / 48, patch_size=3),
        verify_side=48, intensity_side=64, turn_penalty=0.0, redescribe=None)
