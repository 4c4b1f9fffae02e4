"""What the report needs besides cases.csv (:class:`ReportContext`), and where predictions are kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..runner import View


@dataclass
class ReportContext:
    """Run order, skipped methods and failures, settings, and how to picture a case.

    Attributes
    ----------
    view : callable (method, template, target) -> View, optional
        A 2D picture of a target with that case's stored prediction and the truth (the data
        kind's runner provides it); without it the report has no overlays.
    element : str
        Unit word of array distances: ``"px"`` (images) or ``"voxels"`` (volumes).
    """

    title: str
    methods: list[str]
    baselines: list[str]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, backbone|segmenter|baseline, reason)
    label_names: dict[int, str] = field(default_factory=dict)
    view: Callable[[str, str, str], View] | None = None
    memory_probe: str = "rss"
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # template, target, method, error
    settings: dict[str, str] = field(default_factory=dict)
    element: str = "px"


def prediction_path(predictions_dir: Path, method: str, template: str, target: str, suffix: str = ".png") -> Path:
    """Where a case's predicted label map is kept (``predictions/<method>/<template>__<target><suffix>``)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
    return Path(predictions_dir) / slug / f"{template}__{target}{suffix}"
