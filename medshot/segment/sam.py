"""Segment Anything as medshot's promptable segmenter (transformers' ``SamModel``, no torchvision).

Per target, the image encoder runs once; every label (and the optional second iteration) then costs
one prompt-encoder + mask-decoder call on the cached image embedding. When the feature backbone is the
same SAM encoder (``--backbone sam_vit_b``), the backbone's pass is reused through the embedding cache of
:mod:`medshot.models.sam`, so features and segmentation come from one encoder pass. Loading, the
checkpoint catalogue and the image/prompt frame (:class:`~medshot.models.sam.SamFrame`) live there; this
module turns each label's carried prompts into SAM prompts and picks and reconciles the masks.

This module imports without torch; torch and transformers load when a SAM segmenter is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..core.errors import MedshotError
from ..models.sam import SAM_MEAN, SAM_STD, SamFrame, SamRuntime, load_sam
from .base import Prompt, Segmentation, box_from_mask, box_from_points, resolve_overlaps


@dataclass
class _Decoded:
    low: Any  # (k, low, low) torch logits over the padded frame
    full: np.ndarray  # (k, H, W) logits at the target's resolution
    iou: np.ndarray  # (k,) predicted IoU
    choice: float = 0.0  # selection score of the chosen candidate
    best: int = 0


class SamSegmenter:
    """Segment Anything driven by the carried prompts of each label.

    Parameters
    ----------
    name : str
        medshot name of the checkpoint (``sam_vit_b``, ``slimsam_50``, ``medsam_vit_b``, ...).
    weights : path or hub id, optional
        ``save_pretrained`` folder, official ``.pth`` file or hub id (default: the name's hub checkpoint
        from the local Hugging Face cache).
    use_box : bool
        Add a box prompt per label.
    box_source : {"auto", "mask", "points"}
        Where the box comes from: ``"auto"`` takes the coarse mask's box when there is a coarse mask (it
        bounds the whole structure, the positive points only its inside), else ``Prompt.box_xyxy``, else
        the positive points' box.
    use_mask_prompt : bool
        Give the coarse mask to SAM as a low-resolution mask prompt.
    iterate : bool
        Decode a second time with the best mask's logits as the mask prompt.
    multimask : bool
        Ask for SAM's three candidate masks and choose by predicted IoU and agreement with the coarse
        mask; otherwise take SAM's single-mask output.
    device, dtype : optional
        Torch device and dtype (``float32``, ``bfloat16``, ``float16``).
    runtime : SamRuntime, optional
        An already loaded model (then ``weights``, ``device`` and ``dtype`` are not used); see :meth:`from_model`.
    """

    def __init__(self, name: str = "sam_vit_b", weights: str | os.PathLike | None = None, use_box: bool = True,
                 box_source: str = "auto", use_mask_prompt: bool = False, iterate: bool = False,
                 multimask: bool = True, device=None, dtype=None, runtime: SamRuntime | None = None):
        if box_source not in ("auto", "mask", "points"):
            raise MedshotError(f"box_source must be auto, mask or points, not '{box_source}'")
        self.name = name
        self.sam = runtime if runtime is not None else load_sam(name, weights, device, dtype)
        self.use_box = use_box
        self.box_source = box_source
        self.use_mask_prompt = use_mask_prompt
        self.iterate = iterate
        self.multimask = multimask

    @classmethod
    def from_model(cls, model, name: str = "sam", mean=SAM_MEAN, std=SAM_STD, **options) -> SamSegmenter:
        """A segmenter around an already built ``SamModel`` (benchmarks, experiments)."""
        return cls(name, runtime=SamRuntime(model.eval(), tuple(mean), tuple(std), "<model>"), **options)

    @property
    def model(self):
        return self.sam.model

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[Segmentation]:
        """Masks for every prompt's label in ``image`` ((H, W) float in [0, 1]), one encoder pass in all."""
        image = np.asarray(image, np.float32)
        if image.ndim != 2:
            raise MedshotError(f"{self.name} segments 2D images; volumes take the classical or randomwalker segmenter")
        embedding, frame = self.sam.embed(image)
        results = [self._segment_one(embedding, frame, p) for p in prompts]
        return resolve_overlaps(results)  # the larger SAM logit keeps a contested pixel

    # ------------------------------------------------------------------------------------------

    def _segment_one(self, embedding, frame: SamFrame, prompt: Prompt) -> tuple[Segmentation, np.ndarray | None]:
        H, W = frame.shape
        coarse = None if prompt.mask is None else np.asarray(prompt.mask, bool)
        if coarse is not None and not coarse.any():
            coarse = None
        # SAM takes points as (x, y) = (column, row): medshot's array order reversed.
        pos = np.asarray(prompt.positive, np.float64).reshape(-1, 2)[:, ::-1]
        neg = np.asarray(prompt.negative, np.float64).reshape(-1, 2)[:, ::-1]
        if len(pos) == 0 and coarse is not None:
            pos = _interior_point(coarse)[None]
        box = self._box(prompt, coarse, pos, (H, W)) if self.use_box else None
        if len(pos) == 0 and box is None:
            return Segmentation(prompt.label, np.zeros((H, W), bool), 0.0), None
        points = np.vstack([pos, neg])
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.int64)
        mask_input = None
        if self.use_mask_prompt and coarse is not None:
            mask_input = frame.mask_to_lowres(coarse, self.sam.lowres_size)
        out = self._choose(self._decode(embedding, frame, points, labels, box, mask_input, self.multimask), coarse)
        if self.iterate:
            # SAM's interactive loop: the previous best logits as mask prompt; one mask is unambiguous then.
            again = self._decode(embedding, frame, points, labels, box, out.low[out.best][None, None], False)
            out = self._choose(again, coarse)
        logits = out.full[out.best]
        mask = logits > 0
        score = float(np.clip(out.choice, 0.0, 1.0)) if mask.any() else 0.0
        return Segmentation(prompt.label, mask, score), logits

    def _box(self, prompt: Prompt, coarse, pos: np.ndarray, shape) -> np.ndarray | None:
        candidates = []
        if self.box_source in ("auto", "mask") and coarse is not None:
            candidates.append(_xyxy(box_from_mask(coarse)))
        if self.box_source in ("auto", "points"):
            if prompt.box is not None:
                candidates.append(_xyxy(np.asarray(prompt.box, np.float64)))
            if len(pos) >= 2:
                candidates.append(box_from_points(pos, 0.1, tuple(shape)[::-1]))  # pos is (x, y) already
        for box in candidates:
            # A box around a single point says nothing about extent and SAM reads it as a tiny object.
            if box is not None and box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                return box
        return None

    def _decode(self, embedding, frame: SamFrame, points: np.ndarray, labels: np.ndarray, box, mask_input,
                multimask: bool) -> _Decoded:
        """One prompt-encoder + mask-decoder call on the cached embedding."""
        import torch

        device, dtype = self.sam.device, self.sam.dtype
        kwargs: dict[str, Any] = {"multimask_output": multimask}
        if len(points):
            xy = frame.to_sam(points)
            kwargs["input_points"] = torch.tensor(xy, dtype=torch.float32, device=device)[None, None]
            kwargs["input_labels"] = torch.tensor(labels, device=device)[None, None]
        if box is not None:
            corners = frame.to_sam(np.asarray(box, np.float64).reshape(2, 2)).reshape(4)
            kwargs["input_boxes"] = torch.tensor(corners, dtype=torch.float32, device=device)[None, None]
        if mask_input is not None:
            kwargs["input_masks"] = mask_input.to(device=device, dtype=dtype)
        with torch.inference_mode():
            out = self.sam.model(image_embeddings=embedding, **kwargs)
        low = out.pred_masks[0, 0].float()
        iou = out.iou_scores[0, 0].float().cpu().numpy()
        return _Decoded(low, frame.lowres_to_image(low), iou)

    def _choose(self, dec: _Decoded, coarse: np.ndarray | None) -> _Decoded:
        """Pick the candidate with the best predicted IoU, averaged with its IoU against the coarse mask if any."""
        scores = dec.iou.astype(np.float64)
        if coarse is not None:
            masks = dec.full > 0
            inter = (masks & coarse).sum(axis=(1, 2))
            union = (masks | coarse).sum(axis=(1, 2))
            agreement = inter / np.maximum(union, 1)
            scores = 0.5 * scores + 0.5 * agreement
        dec.best = int(np.argmax(scores))
        dec.choice = float(scores[dec.best])
        return dec


def _xyxy(box: np.ndarray | None) -> np.ndarray | None:
    """A medshot box ``(row0, col0, row1, col1)`` as SAM's ``(x0, y0, x1, y1)``."""
    return None if box is None else np.asarray(box, np.float64)[[1, 0, 3, 2]]


def _interior_point(mask: np.ndarray) -> np.ndarray:
    """A click for a label that has only a carried mask: deep inside it, nearest its centroid among the deepest."""
    dist = ndimage.distance_transform_edt(mask)
    ys, xs = np.nonzero(dist >= 0.9 * dist.max())
    cy, cx = np.argwhere(mask).mean(axis=0)
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return np.array([xs[i], ys[i]], np.float64)
