"""Pictures: label maps and landmarks drawn over the image (RGB uint8 arrays)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Distinct, colour-blind-friendly colours (Okabe-Ito first, then tab10-like).
PALETTE = np.array([
    [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0],
    [204, 121, 167], [255, 255, 255], [148, 103, 189], [140, 86, 75], [127, 127, 127], [188, 189, 34],
], dtype=np.uint8)


def label_color(label: int) -> np.ndarray:
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def overlay(image: np.ndarray, label_map: np.ndarray | None = None, landmarks_xy: np.ndarray | None = None,
            truth_xy: np.ndarray | None = None, alpha: float = 0.35, max_side: int | None = 1024) -> np.ndarray:
    """Gray image (values in [0, 1]) with filled, outlined labels and landmark crosses.

    ``truth_xy`` (if given) is drawn as small green circles with a line to each prediction.
    """
    from PIL import Image, ImageDraw

    gray = np.clip(np.asarray(image, np.float32), 0, 1)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    if label_map is not None:
        out = rgb.astype(np.float32)
        for label in np.unique(label_map):
            if label == 0:
                continue
            m = label_map == label
            c = label_color(label).astype(np.float32)
            out[m] = (1 - alpha) * out[m] + alpha * c
            edge = m & ~ndimage.binary_erosion(m)
            out[edge] = c
        rgb = out.astype(np.uint8)
    pil = Image.fromarray(rgb)
    H, W = gray.shape
    scale = 1.0
    if max_side and max(H, W) < 256:
        scale = 256 / max(H, W)  # tiny images are unreadable at native size
        pil = pil.resize((int(round(W * scale)), int(round(H * scale))), Image.NEAREST)
    elif max_side and max(H, W) > max_side:
        scale = max_side / max(H, W)
        pil = pil.resize((int(round(W * scale)), int(round(H * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(pil)
    r = max(3, int(0.008 * max(pil.size)))

    def px(p):
        return ((p[0] + 0.5) * scale - 0.5, (p[1] + 0.5) * scale - 0.5)

    if truth_xy is not None and landmarks_xy is not None:
        for p, q in zip(np.asarray(landmarks_xy), np.asarray(truth_xy), strict=False):
            draw.line([px(p), px(q)], fill=(255, 255, 0), width=1)
    if truth_xy is not None:
        for q in np.asarray(truth_xy):
            x, y = px(q)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 220, 0), width=2)
    if landmarks_xy is not None:
        for i, p in enumerate(np.asarray(landmarks_xy)):
            x, y = px(p)
            draw.line([x - r, y, x + r, y], fill=(255, 40, 40), width=2)
            draw.line([x, y - r, x, y + r], fill=(255, 40, 40), width=2)
            draw.text((x + r + 1, y - r - 1), str(i + 1), fill=(255, 80, 80))
    return np.asarray(pil)
