"""Helpers for the batch tests, in a module of their own so that worker processes can import them.

A batch ships its prepared shot (with its segmenter) to worker processes by pickling; a segmenter
class defined here is pickled by reference and found again by the workers (they get this process's
``sys.path``, which pytest gave the tests folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from medshot.synthetic import random_warp

# Targets this wide (pixels) make the segmenter misbehave; the others are 224 wide.
BAD_WIDTH = 200


class FlakySegmenter:
    """The weights-free segmenter, except on images ``BAD_WIDTH`` wide, where it does ``mode``.

    ``mode``: ``"raise"`` (an error as the real segmenter gave on CT slices), ``"interrupt"`` (as if
    Ctrl-C came while that target ran) or ``"die"`` (its process ends at once, as when killed).
    """

    name = "flaky"

    def __init__(self, mode: str = "raise"):
        from medshot.segment.classical import ClassicalSegmenter

        self.mode = mode
        self.inner = ClassicalSegmenter()

    def segment(self, image, prompts):
        if image.shape[1] == BAD_WIDTH:
            if self.mode == "raise":
                raise ValueError("Input image dtype is bool. Interpolation is not defined with bool data type.")
            if self.mode == "interrupt":
                raise KeyboardInterrupt
            if self.mode == "die":
                os._exit(9)
        return self.inner.segment(image, prompts)


def use_segmenter(monkeypatch, mode: str) -> None:
    """Make ``--segmenter classical`` give a :class:`FlakySegmenter` in this process (and, shipped, in workers)."""
    monkeypatch.setattr("medshot.pipeline.oneshot.get_segmenter", lambda name, **kw: FlakySegmenter(mode))


def write_targets(folder: Path, phantom, n: int, bad: tuple[int, ...] = ()) -> list[Path]:
    """``n`` warped phantoms ``case01.png`` ...; the ones numbered in ``bad`` are cropped to ``BAD_WIDTH``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        case, _ = random_warp(phantom, seed=i)
        image = (case.image * 255).astype(np.uint8)
        if i in bad:
            image = image[:, :BAD_WIDTH]
        path = folder / f"case{i:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
