"""One name -> builder mechanism for backbones, segmenters and baselines.

A :class:`Registry` is a static table of :class:`Entry` objects. An entry names its builder either
directly (a callable) or as a ``"package.module:function"`` string, and likewise its availability
check. Building the registry imports nothing: a plugin module is imported only when its builder is
called or its availability is asked, so listing names never pulls in torch or a model's code, and
plugin modules never import the registry back to register themselves.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from .errors import MedshotError

#: A callable, or the ``"package.module:attribute"`` path of one (imported on first use).
Target = str | Callable[..., Any]


def resolve(target: Target) -> Callable[..., Any]:
    """The callable ``target`` names, importing its module if it is given as ``"package.module:attr"``.

    Parameters
    ----------
    target : str or callable
        A callable (returned as is) or ``"package.module:attribute"``; the attribute may be dotted
        (``"module:Class.method"``).

    Raises
    ------
    ValueError
        When a string target has no ``:``.
    ImportError, AttributeError
        When the module or the attribute does not exist.
    """
    if callable(target):
        return target
    module_name, sep, attribute = str(target).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"builder '{target}' is not of the form 'package.module:function'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Entry:
    """One name in a registry.

    Attributes
    ----------
    name : str
        The name users give (``--backbone NAME``, ``get_segmenter(NAME)``).
    builder : str or callable
        Called as ``builder(**fixed, **options)`` to build the object; a string is imported on first use.
    family : str
        A grouping shown in listings (``"dinov2"``, ``"sam"``, ``"weights-free"``).
    description : str
        One line for listings.
    checkpoint : str, optional
        The default Hugging Face checkpoint, when the entry needs weights.
    availability : str or callable, optional
        Called as ``availability(**fixed)``; returns ``(ready, reason)``. None means always available
        (weights-free).
    fixed : mapping
        Keyword arguments the entry always passes to its builder and availability check (e.g. the
        checkpoint of one of several names served by one builder). Users cannot set them as options.
    dims : tuple of int
        The image dimensions what it builds handles (2: images, 3: volumes).
    """

    name: str
    builder: Target
    _: KW_ONLY
    family: str = ""
    description: str = ""
    checkpoint: str | None = None
    availability: Target | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    dims: tuple[int, ...] = (2, 3)

    def available(self) -> tuple[bool, str]:
        """``(ready, reason)``; any failure of the check (a missing plugin module too) becomes a reason."""
        if self.availability is None:
            return True, "weights-free"
        try:
            return resolve(self.availability)(**self.fixed)
        except Exception as exc:  # noqa: BLE001 - a status line must never crash a listing
            return False, f"{type(exc).__name__}: {exc}"

    def load(self) -> Callable[..., Any]:
        """The builder itself (imports its module when it is given as a string)."""
        return resolve(self.builder)

    def option_names(self) -> list[str] | None:
        """The options the builder takes (its keyword parameters less ``fixed``), or None for ``**kwargs``."""
        params = inspect.signature(self.load()).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return [p for p in params if p not in self.fixed]


class Registry:
    """Names -> :class:`Entry`, in the order they were given (listings keep that order).

    Parameters
    ----------
    kind : str
        What the registry holds (``"backbone"``, ``"segmenter"``), for error messages.
    entries : iterable of Entry
        The static table.
    check_options : bool
        Refuse options the builder's signature does not name with a :class:`MedshotError` (rather
        than the builder's own ``TypeError``).
    """

    def __init__(self, kind: str, entries: Iterable[Entry] = (), check_options: bool = False):
        self.kind = kind
        self.check_options = check_options
        self._entries: dict[str, Entry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: Entry) -> None:
        """Add ``entry`` (or replace the entry of the same name, keeping its place)."""
        self._entries[entry.name] = entry

    def names(self, ndim: int | None = None) -> list[str]:
        """The registered names, in table order (only those that handle ``ndim``-dimensional images, if given)."""
        return [n for n, e in self._entries.items() if ndim is None or ndim in e.dims]

    def check_dims(self, name: str, ndim: int) -> None:
        """Raise a :class:`MedshotError` naming the alternatives if ``name`` does not handle ``ndim``-D images."""
        if ndim not in self.entry(name).dims:
            what = {2: "2D images", 3: "volumes"}.get(ndim, f"{ndim}-D images")
            raise MedshotError(f"{self.kind} '{name}' does not work on {what}; these do: {', '.join(self.names(ndim))}")

    def entries(self) -> list[Entry]:
        """The registered entries, in table order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name is a :class:`MedshotError` listing the known ones."""
        if name not in self._entries:
            raise MedshotError(f"unknown {self.kind} '{name}'; known: {', '.join(self._entries)}")
        return self._entries[name]

    def status(self, name: str) -> tuple[bool, str]:
        """``(ready, reason)`` of ``name``; an unknown name is ``(False, reason)``, never an exception."""
        if name not in self._entries:
            return False, f"unknown {self.kind} '{name}'"
        return self._entries[name].available()

    def build(self, name: str, **options: Any) -> Any:
        """Build ``name`` with ``options``; options that are None are left out (the builder's defaults apply).

        Raises
        ------
        MedshotError
            For an unknown name, or (with ``check_options``) an option the builder does not take.
        """
        entry = self.entry(name)
        options = {k: v for k, v in options.items() if v is not None}
        builder = entry.load()
        if self.check_options:
            takes = entry.option_names()
            unknown = [] if takes is None else sorted(set(options) - set(takes))
            if unknown:
                raise MedshotError(f"{self.kind} '{name}' does not take option(s) {', '.join(unknown)} "
                                   f"(it takes: {', '.join(takes) or 'none'})")
        return builder(**entry.fixed, **options)
