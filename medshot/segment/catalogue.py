"""Every segmenter medshot knows, by name: a static table, so listing names imports no segmenter code.

Builders are ``"module:function"`` strings, imported when a segmenter is built or its availability is
asked (:mod:`medshot.core.registry`); every Segment Anything checkpoint of :data:`medshot.models.sam.VARIANTS`
is a segmenter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.registry import Entry, Registry
from ..models.sam import VARIANTS
from .base import Segmenter


def _entries() -> list[Entry]:
    entries = [
        Entry("classical", "medshot.segment.classical:ClassicalSegmenter", family="weights-free",
              description="the carried mask where there is one, else a random walker from the points"),
        Entry("randomwalker", "medshot.segment.classical:RandomWalkerSegmenter", family="weights-free",
              description="random walker from the points, box and carried mask"),
    ]
    for name, variant in VARIANTS.items():
        entries.append(Entry(name, "medshot.segment.sam:SamSegmenter", family="sam", description=variant.description,
                             checkpoint=variant.repo_id, availability="medshot.models.sam:availability",
                             fixed={"name": name}, dims=(2,)))
    return entries


#: The segmenter registry. Options go to the segmenter's constructor unchecked (as they always have).
SEGMENTERS = Registry("segmenter", _entries())


def register_segmenter(name: str, factory: Callable[..., Segmenter],
                       availability: Callable[[], tuple[bool, str]] | None = None,
                       dims: tuple[int, ...] = (2,)) -> None:
    """Add a segmenter (e.g. a user's own): ``factory(**options)`` builds it, ``availability()`` says if it can run,
    ``dims`` which image dimensions it handles."""
    SEGMENTERS.register(Entry(name, factory, availability=availability, dims=tuple(dims)))


def segmenter_names(ndim: int | None = None) -> list[str]:
    """Every registered segmenter name (that handles ``ndim``-D images, if given), weights-free ``classical`` first."""
    return SEGMENTERS.names(ndim)


def segmenter_checkpoint(name: str) -> str | None:
    """The default checkpoint of a segmenter that loads weights, None for a weights-free one."""
    return SEGMENTERS.entry(name).checkpoint


def check_segmenter(name: str, ndim: int) -> None:
    """A one-line :class:`MedshotError` if segmenter ``name`` is unknown or does not handle ``ndim``-D images."""
    SEGMENTERS.check_dims(name, ndim)


def segmenter_status(name: str) -> tuple[bool, str]:
    """``(ready, reason)`` for `medshot backbones`; a failing check becomes the reason, never an exception."""
    return SEGMENTERS.status(name)


def get_segmenter(name: str, **options: Any) -> Segmenter:
    """Build the segmenter called ``name``; options that are None are left out.

    Raises
    ------
    MedshotError
        For an unknown name (and whatever the segmenter raises for its options).
    """
    return SEGMENTERS.build(name, **options)
