"""One :class:`~.base.Runner` per kind of data: ``"2d"`` images, ``"3d"`` volumes."""

from __future__ import annotations

from .base import Prediction, Runner, View

KINDS = ("2d", "3d")


def runner_for(kind: str, window: tuple[float, float] | None = None, work_size: int = 256) -> Runner:
    """The runner of a dataset kind (``"2d"`` or ``"3d"``)."""
    if kind == "2d":
        from .image2d import ImageRunner

        return ImageRunner(window, work_size)
    if kind == "3d":
        from .volume3d import VolumeRunner

        return VolumeRunner(window, work_size)
    raise ValueError(f"unknown data kind '{kind}' (known: {', '.join(KINDS)})")


__all__ = ["KINDS", "Prediction", "Runner", "View", "runner_for"]
