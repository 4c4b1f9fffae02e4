"""Templates made of the synthetic 3D phantom (shared by the volume tests)."""

from __future__ import annotations

import numpy as np

from medshot.data.annotations import Landmark
from medshot.data.image import Image, from_array
from medshot.data.template import Template
from medshot.synthetic3d import Phantom3D, grid_affine, landmarks_voxel, sample_phantom


def template_of(image: Image, labels: np.ndarray, points: np.ndarray) -> Template:
    """An in-memory template: ``image``, its label map (the image's array order, labels 1 and 2) and the
    phantom's four landmarks ``points`` (array indices of ``image``)."""
    template = Template.from_image(image, labels={1: "organ 1", 2: "organ 2"},
                                   landmarks=[Landmark(n, p) for n, p in zip("abcd", points)])
    template.mask_path = "in-memory"  # type: ignore[assignment]
    template._mask = np.asarray(labels).astype(np.int32)
    return template


def phantom_template(phantom: Phantom3D, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Template:
    """The phantom sampled on a centred RAS grid of ``shape`` voxels of ``spacing`` mm, as a template."""
    affine = grid_affine(shape, spacing)
    array, labels = sample_phantom(phantom, shape, affine)
    image = from_array(array, affine)
    return template_of(image, from_array(labels, affine).array,
                       image.source_to_index(landmarks_voxel(phantom, affine)))
