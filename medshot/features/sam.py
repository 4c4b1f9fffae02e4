"""Segment Anything's image encoder as a feature backbone: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``.

The features are the encoder neck's output (256 channels on a 64 x 64 grid for released models, one
cell per 16 x 16 input patch), i.e. exactly the image embedding the SAM mask decoder reads. The backbone
therefore asks OneShot for the full-resolution image (``full_resolution_input``) and computes the
embedding through :meth:`medshot.models.sam.SamRuntime.embed`, whose cache hands the same pass to a SAM
segmenter on the same weights: one encoder pass per target for features and masks.

Importing this module needs neither torch nor weights; building a backbone does. The names are listed
in :mod:`.catalogue`.
"""

from __future__ import annotations

import os

import numpy as np

from ..models.sam import load_sam
from .base import FeatureMap, l2_normalize


class SamBackbone:
    """Dense SAM image-encoder features of an image, described in that image's pixel frame.

    Parameters
    ----------
    name : str
        ``sam_vit_b``, ``sam_vit_l`` or ``sam_vit_h`` (picks the default hub checkpoint).
    weights : path or hub id, optional
        ``save_pretrained`` folder, official ``.pth`` file or hub id.
    device, dtype : optional
        Torch device and dtype (``float32``, ``bfloat16``, ``float16``).
    """

    # OneShot then passes the same full-resolution array it later gives the segmenter, so the SAM
    # segmenter finds this pass in the embedding cache instead of encoding the target again.
    full_resolution_input = True

    def __init__(self, name: str = "sam_vit_b", weights: str | os.PathLike | None = None, device=None, dtype=None):
        self.name = name
        self.sam = load_sam(name, weights, device, dtype)

    @property
    def model(self):
        return self.sam.model

    def __call__(self, image: np.ndarray) -> FeatureMap:
        embedding, frame = self.sam.embed(np.asarray(image, np.float32))
        H, W = frame.shape
        h, w = frame.resized
        patch = self.sam.patch_size
        # Keep the cells that cover the image (the rest only saw padding).
        gh, gw = -(-h // patch), -(-w // patch)
        data = embedding[0, :, :gh, :gw].float().cpu().numpy()
        # Cell i spans resized pixels [i * patch, (i + 1) * patch): its centre, taken back to the original.
        sy, sx = patch * H / h, patch * W / w
        return FeatureMap(l2_normalize(data, axis=0), (sy, sx), (0.5 * sy - 0.5, 0.5 * sx - 0.5), (H, W))

