"""What an evaluation runs: which cases are templates, which methods, and the (template, target, method) plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import MedshotError
from .cases import Dataset
from .runner import Runner, runner_for

TEMPLATE_CHOICES = ("spread", "first")
SPLITS = ("all", "tune", "report")


def split_cases(names: Sequence[str], split: str = "all") -> list[str]:
    """The cases of one half of a dataset, so that parameters chosen on one half are reported on the other.

    Cases are sorted by name (one case per subject in every task of the development split) and
    dealt alternately: positions 0, 2, 4, ... form the ``tune`` half, 1, 3, 5, ... the ``report``
    half; ``all`` keeps every case.
    """
    names = sorted(names)
    if split not in SPLITS:
        raise MedshotError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if split == "all":
        return names
    return names[0::2] if split == "tune" else names[1::2]


def select_templates(names: Sequence[str], spec: str = "first", choice: str = "spread") -> list[str]:
    """Which cases serve as templates.

    Parameters
    ----------
    names : sequence of str
        Case names in sorted order.
    spec : str
        ``"first"`` (the first case), ``"all"`` (each case in turn: leave-one-out) or an integer
        ``K`` (K cases; all of them when K >= the number of cases).
    choice : {"spread", "first"}
        How ``K`` cases are picked: ``spread`` takes indices ``floor(i (n-1)/(K-1) + 1/2)`` for
        ``i = 0..K-1`` (evenly over the sorted list, first and last included; ``K = 1`` gives the
        first); ``first`` takes the first ``K``.

    Returns
    -------
    list of str
    """
    names = list(names)
    n = len(names)
    spec = str(spec).strip().lower()
    if spec == "first":
        return names[:1]
    if spec == "all":
        return names
    try:
        k = int(spec)
    except ValueError:
        raise MedshotError(f"--templates must be 'first', 'all' or a number, got '{spec}'") from None
    if k < 1:
        raise MedshotError(f"--templates K must be at least 1, got {k}")
    if choice not in TEMPLATE_CHOICES:
        raise MedshotError(f"--template-choice must be one of {', '.join(TEMPLATE_CHOICES)}, got '{choice}'")
    if k >= n:
        return names
    if choice == "first" or k == 1:
        return names[:k]
    return [names[int(np.floor(i * (n - 1) / (k - 1) + 0.5))] for i in range(k)]


@dataclass
class Method:
    """One row group of the tables: a medshot backbone/segmenter pair or a baseline."""

    name: str
    backbone: str = "classical"
    segmenter: str = "classical"
    baseline: str | None = None


@dataclass
class Skipped:
    """A requested backbone, segmenter or baseline that cannot run here, and why."""

    name: str
    what: str  # "backbone", "segmenter" or "baseline"
    reason: str


def parse_list(text: str | Sequence[str] | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``"none"`` or empty -> ``[]``."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [s.strip() for s in items if s and s.strip()]
    return [] if [s.lower() for s in out] == ["none"] else list(dict.fromkeys(out))


def resolve_methods(backbones: Sequence[str], segmenters: Sequence[str], baselines: Sequence[str],
                    has_masks: bool, runner: Runner | None = None) -> tuple[list[Method], list[Skipped]]:
    """The runnable methods, and the requested ones that are skipped with the reason.

    ``"all"`` in ``backbones`` or ``segmenters`` asks for every registered one (segmenters: every
    one the data kind offers). Without masks the segmenter plays no part and medshot methods are
    named by backbone only. An unknown baseline is an error; one that cannot run here (ANTs not
    installed) is skipped.

    Parameters
    ----------
    runner : Runner, optional
        The data kind's runner (default the 2D one): which segmenters and baselines exist.
    """
    from ..features import backbone_entries

    runner = runner or runner_for("2d")
    entries = {e.name: e for e in backbone_entries()}
    skipped: list[Skipped] = []
    if [b.lower() for b in backbones] == ["all"]:
        backbones = list(entries)
    ready_backbones = []
    for name in backbones:
        if name not in entries:
            skipped.append(Skipped(name, "backbone", f"unknown backbone here (registered: {', '.join(entries)})"))
            continue
        ok, why = entries[name].available()
        if ok:
            ready_backbones.append(name)
        else:
            skipped.append(Skipped(name, "backbone", why))
    ready_segmenters = ["classical"]
    if has_masks:
        if [s.lower() for s in segmenters] == ["all"]:
            segmenters = runner.segmenter_names()
        ready_segmenters = []
        for name in segmenters:
            ok, why = runner.segmenter_status(name)
            if ok:
                ready_segmenters.append(name)
            else:
                skipped.append(Skipped(name, "segmenter", why))
    methods = [Method(f"medshot:{b}/{s}" if has_masks else f"medshot:{b}", b, s)
               for b in ready_backbones for s in ready_segmenters]
    for name in baselines:
        if name not in runner.baseline_names():
            raise MedshotError(f"unknown baseline '{name}'; known: {', '.join(runner.baseline_names())} (or 'none')")
        ok, why = runner.baseline_status(name)
        if ok:
            methods.append(Method(name, baseline=name))
        else:
            skipped.append(Skipped(name, "baseline", why))
    return methods, skipped


def plan_cases(dataset: Dataset, templates: Sequence[str], methods: Sequence[Method],
               max_targets: int | None = None, split: str = "all") -> list[tuple[str, str, Method]]:
    """Every (template, target, method) to run, in the order they run (template, method, target).

    Targets are the other cases of the same ``split`` half as the templates.
    """
    plan = []
    pool = split_cases(dataset.names, split)
    for t in templates:
        targets = [n for n in pool if n != t]
        if max_targets is not None:
            targets = targets[: max(0, int(max_targets))]
        for m in methods:
            plan.extend((t, target, m) for target in targets)
    return plan
