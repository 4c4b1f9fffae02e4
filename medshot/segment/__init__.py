"""Promptable segmenters behind one interface, by name."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import MedshotError
from .base import Prompt, Segmentation, Segmenter, box_from_mask, box_from_points

_SEGMENTERS: dict[str, Callable[..., Segmenter]] = {}
_STATUS: dict[str, Callable[[], tuple[bool, str]]] = {}


def register_segmenter(name: str, factory: Callable[..., Segmenter],
                       availability: Callable[[], tuple[bool, str]] | None = None) -> None:
    _SEGMENTERS[name] = factory
    if availability is not None:
        _STATUS[name] = availability


def _load_plugins() -> None:
    if "classical" in _SEGMENTERS:
        return
    from .classical import ClassicalSegmenter, RandomWalkerSegmenter

    register_segmenter("classical", lambda **kw: ClassicalSegmenter(**kw))
    register_segmenter("randomwalker", lambda **kw: RandomWalkerSegmenter(**kw))
    import importlib

    try:
        importlib.import_module(f"{__package__}.sam")  # registers the Segment Anything names
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.sam":
            raise


def segmenter_names() -> list[str]:
    _load_plugins()
    return list(_SEGMENTERS)


def segmenter_status(name: str) -> tuple[bool, str]:
    _load_plugins()
    if name not in _STATUS:
        return True, "weights-free"
    try:
        return _STATUS[name]()
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def get_segmenter(name: str, **options) -> Segmenter:
    _load_plugins()
    if name not in _SEGMENTERS:
        raise MedshotError(f"unknown segmenter '{name}'; known: {', '.join(_SEGMENTERS)}")
    return _SEGMENTERS[name](**{k: v for k, v in options.items() if v is not None})


__all__ = [
    "Prompt", "Segmentation", "Segmenter", "box_from_mask", "box_from_points", "get_segmenter",
    "register_segmenter", "segmenter_names", "segmenter_status",
]
