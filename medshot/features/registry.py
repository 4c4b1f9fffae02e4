"""Backbones by name.

A backbone plugin registers a factory (keyword options -> :class:`~medshot.features.base.Backbone`)
and, when it needs weights, a function that says whether they are present here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MedshotError
from .base import Backbone


@dataclass
class BackboneEntry:
    name: str
    family: str
    factory: Callable[..., Backbone]
    description: str = ""
    checkpoint: str | None = None
    # Returns (available, reason); None means "always available" (weights-free).
    availability: Callable[[], tuple[bool, str]] | None = None

    def available(self) -> tuple[bool, str]:
        if self.availability is None:
            return True, "weights-free"
        try:
            return self.availability()
        except Exception as exc:  # noqa: BLE001 - a status line must never crash `medshot backbones`
            return False, f"{type(exc).__name__}: {exc}"


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> None:
    _REGISTRY[entry.name] = entry


def backbone_names() -> list[str]:
    _load_plugins()
    return list(_REGISTRY)


def backbone_entries() -> list[BackboneEntry]:
    _load_plugins()
    return list(_REGISTRY.values())


def get_backbone(name: str, **options) -> Backbone:
    """Build the backbone called ``name`` with its options (e.g. ``layer``, ``facet``, ``stride``)."""
    _load_plugins()
    if name not in _REGISTRY:
        raise MedshotError(f"unknown backbone '{name}'; known: {', '.join(_REGISTRY)}")
    options = {k: v for k, v in options.items() if v is not None}
    factory = _REGISTRY[name].factory
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise MedshotError(f"backbone '{name}' does not take option(s) {', '.join(unknown)} "
                               f"(it takes: {', '.join(params) or 'none'})")
    return factory(**options)


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    # Foundation-model plugins import lazily (torch is optional); each registers its names here.
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from . import classical

    register_backbone(BackboneEntry(
        "classical", "weights-free", classical.ClassicalBackbone,
        "multi-scale Gaussian-derivative jets + MIND self-similarity (no weights needed)",
    ))
    import importlib

    # Each plugin module registers its names on import; a plugin whose optional dependency is missing
    # registers them anyway (their availability then says why they cannot run).
    for module in ("foundation", "sam"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
