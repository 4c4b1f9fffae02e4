"""Pictures: label maps and landmarks drawn over an image (RGB uint8 arrays).

:func:`overlay` draws on a 2D image; :func:`structure_overlay` shows one structure of a volume in
three orthogonal planes through its centroid. Points are array indices ``(row, col)``, as
everywhere in medshot.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .core.geometry import radiological
from .core.intensity import apply_range, intensity_range

# Distinct, colour-blind-friendly colours (Okabe-Ito first, then tab10-like).
PALETTE = np.array([
    [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0],
    [204, 121, 167], [255, 255, 255], [148, 103, 189], [140, 86, 75], [127, 127, 127], [188, 189, 34],
], dtype=np.uint8)


def label_color(label: int) -> np.ndarray:
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def overlay(image: np.ndarray, label_map: np.ndarray | None = None, points: np.ndarray | None = None,
            truth: np.ndarray | None = None, alpha: float = 0.35, max_side: int | None = 1024,
            label_names: dict[int, str] | None = None, point_names: list[str] | None = None) -> np.ndarray:
    """Gray image with filled, outlined labels and landmark crosses, as RGB uint8.

    Parameters
    ----------
    image : ndarray (H, W)
        Intensities in [0, 1].
    label_map : ndarray (H, W), optional
        Labels (0 = background), each drawn in its own colour.
    points : ndarray (N, 2), optional
        Landmarks ``(row, col)``, drawn as numbered red crosses.
    truth : ndarray (N, 2), optional
        True landmarks ``(row, col)``, drawn as small green circles with a line to each of ``points``.
    max_side : int or None
        Longest side of the picture: larger images are shrunk to it, images under 256 pixels are
        enlarged to 256; None keeps the image's size.
    label_names : dict, optional
        Label -> name: a legend panel on the right lists the labels present (colour swatch, name).
    point_names : list of str, optional
        Landmark names, listed in the legend under their numbers.
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

    def px(p):  # (row, col) -> PIL's (x, y) on the resized picture
        return ((p[1] + 0.5) * scale - 0.5, (p[0] + 0.5) * scale - 0.5)

    if truth is not None and points is not None:
        for p, q in zip(np.asarray(points), np.asarray(truth), strict=False):
            draw.line([px(p), px(q)], fill=(255, 255, 0), width=1)
    if truth is not None:
        for q in np.asarray(truth):
            x, y = px(q)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 220, 0), width=2)
    if points is not None:
        for i, p in enumerate(np.asarray(points)):
            x, y = px(p)
            draw.line([x - r, y, x + r, y], fill=(255, 40, 40), width=2)
            draw.line([x, y - r, x, y + r], fill=(255, 40, 40), width=2)
            draw.text((x + r + 1, y - r - 1), str(i + 1), fill=(255, 80, 80))
    pic = np.asarray(pil)
    entries = []
    if label_names is not None and label_map is not None:
        entries += [(label_names.get(int(v), f"label {int(v)}"), tuple(label_color(v)))
                    for v in np.unique(label_map) if v != 0]
    if point_names is not None:
        entries += [(f"{i + 1} {name}", (255, 40, 40)) for i, name in enumerate(point_names)]
    return with_legend(pic, entries) if entries else pic


def with_legend(picture: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """``picture`` (H, W, 3) with a black legend panel on its right: a colour swatch and a name per entry.

    Long lists wrap into further columns so the panel never grows taller than the picture (at least
    one entry per column).
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    line, swatch, pad = 16, 10, 6
    H = picture.shape[0]
    per_column = max(1, (H - 2 * pad) // line)
    columns = [entries[i:i + per_column] for i in range(0, len(entries), per_column)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max(probe.textlength(text, font=font) for text, _ in col) for col in columns]
    width = int(sum(w + swatch + 3 * pad for w in widths)) + pad
    height = max(H, pad * 2 + line * min(len(entries), per_column))
    canvas = Image.new("RGB", (picture.shape[1] + width, height), (0, 0, 0))
    canvas.paste(Image.fromarray(np.ascontiguousarray(picture[..., :3])), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = picture.shape[1] + pad
    for col, w in zip(columns, widths):
        for k, (text, rgb) in enumerate(col):
            y = pad + k * line
            draw.rectangle([x0, y + 2, x0 + swatch, y + 2 + swatch], fill=tuple(int(c) for c in rgb))
            draw.text((x0 + swatch + pad, y), text, fill=(235, 235, 235), font=font)
        x0 += int(w) + swatch + 3 * pad
    return np.asarray(canvas)


# ------------------------------------------------------------------------------------------------
# Volumes: three orthogonal planes
# ------------------------------------------------------------------------------------------------

PLANES = ("axial", "coronal", "sagittal")


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A slice of a canonical (RAS+) volume in the usual radiological view.

    axial (axis 2): anterior up, patient right on the image left; coronal (axis 1): superior up,
    patient right on the left; sagittal (axis 0): superior up, anterior on the left.
    """
    return radiological(np.take(volume, index, axis=axis))


def structure_overlay(volume: np.ndarray, labels: np.ndarray, label: int, spacing: np.ndarray,
                      value_range: tuple[float, float] | None = None, min_side: int = 256,
                      name: str | None = None) -> np.ndarray | None:
    """Axial, coronal and sagittal planes through a structure's centroid, side by side (RGB uint8).

    Parameters
    ----------
    volume, labels : ndarray (X, Y, Z)
        Raw intensities and the label map, canonical (RAS+) axis order.
    label : int
        The structure to show; None is returned when it is absent.
    spacing : ndarray (3,)
        Voxel size (mm) along the array axes: every panel is resampled to square pixels of one size,
        so the three share one physical scale.
    value_range : (low, high), optional
        Raw intensities shown as black and white (default: robust percentiles of ``volume``).
    name : str, optional
        The structure's name, shown in a legend beside the planes.
    """
    from skimage.transform import resize

    idx = np.argwhere(labels == label)
    if len(idx) == 0:
        return None
    value_range = value_range if value_range is not None else intensity_range(volume)
    spacing = np.asarray(spacing, float)
    # Show the structure with context (its own size again, at least 30 mm) rather than the whole field of view.
    lo, hi = idx.min(0), idx.max(0) + 1
    margin = np.maximum(hi - lo, np.ceil(30.0 / spacing)).astype(int)
    lo = np.maximum(lo - margin, 0)
    hi = np.minimum(hi + margin, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    volume, labels = volume[box], labels[box]
    center = np.round(idx.mean(0)).astype(int) - lo
    pixel = float(spacing.min())
    extents = []
    for axis in (2, 1, 0):  # axial, coronal, sagittal
        rest = [a for a in range(3) if a != axis]
        # plane() transposes: rows follow the second remaining axis, columns the first.
        extents.append((labels.shape[rest[1]] * spacing[rest[1]], labels.shape[rest[0]] * spacing[rest[0]]))
    biggest = max(max(e) for e in extents) / pixel
    zoom = max(1.0, min_side / biggest)
    panels = []
    for axis, (h_mm, w_mm) in zip((2, 1, 0), extents):
        img = apply_range(plane(volume, axis, center[axis]), value_range)
        lab = plane(labels, axis, center[axis])
        shape = (max(2, int(round(h_mm / pixel * zoom))), max(2, int(round(w_mm / pixel * zoom))))
        img = resize(img, shape, order=1, preserve_range=True, anti_aliasing=False)
        lab = resize(lab, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
        panels.append(overlay(img, lab, max_side=None))
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 4, 3), np.uint8)
    row = []
    for p in panels:
        pad = np.zeros((height - p.shape[0], p.shape[1], 3), np.uint8)
        row += [np.vstack([p, pad]), gap]
    pic = np.hstack(row[:-1])
    return with_legend(pic, [(name, tuple(label_color(label)))]) if name else pic


def landmark_overlay(volume: np.ndarray, points: np.ndarray, names: list[str], spacing: np.ndarray,
                     value_range: tuple[float, float] | None = None) -> np.ndarray | None:
    """Volumes: for each landmark, axial, coronal and sagittal planes through it, one row per landmark.

    Parameters
    ----------
    points : ndarray (N, 3)
        Landmarks, indices of the canonical (RAS+) ``volume``.
    names : list of str
        Their names (the legend of each row).
    """
    rows = []
    value_range = value_range if value_range is not None else intensity_range(volume)
    radius = max(1.5, 2.0 / float(np.min(spacing)))  # a dot of ~2 mm, at least a few voxels
    margin = np.ceil(40.0 / np.asarray(spacing, float)).astype(int)  # 40 mm of context each side
    for i, (p, name) in enumerate(zip(np.asarray(points, float), names)):
        lo = np.clip(np.round(p).astype(int) - margin, 0, np.array(volume.shape) - 1)
        hi = np.clip(np.round(p).astype(int) + margin + 1, lo + 1, volume.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.indices(tuple(hi - lo), sparse=True)
        dot = sum((g - c) ** 2 for g, c in zip(grid, p - lo)) <= radius ** 2
        pic = structure_overlay(volume[box], dot.astype(np.uint8) * (i + 1), i + 1, spacing, value_range,
                                name=f"{i + 1} {name}")
        if pic is not None:
            rows.append(pic)
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.hstack([r, np.zeros((r.shape[0], width - r.shape[1], 3), np.uint8)]) for r in rows])
