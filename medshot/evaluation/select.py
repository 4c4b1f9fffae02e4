"""Choosing the backbone (and its layer/facet) and the segmenter on the user's own annotated images.

With two or more templates, each candidate method runs leave-one-template-out: every template in
turn is the target of every other one, and its own annotations are the truth. A candidate is scored
by its mean Dice over those pairs (templates with masks) and its median landmark distance over the
image diagonal (NED); the best mean Dice wins, then the smallest NED (landmark-only templates), then
the earlier candidate (``classical`` first by default: a foundation model must beat it to be chosen).

A choice needs two candidates that ran: with one candidate (one backbone and one segmenter), or
only one that could run, nothing was compared and :func:`made_a_choice` says so (``medshot
select`` then reports the scores and writes nothing into the templates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..core.errors import MedshotError
from ..data.template import METHOD_KEYS, Template
from ..data.write import file_label_values
from .metrics import dice_per_label, normalized_distance


@dataclass
class Choice:
    """One candidate method and how it did on the templates (NaN where it did not run)."""

    method: dict  # backbone, its options and segmenter (the keys of a template's "method")
    mean_dice: float = float("nan")
    median_ned: float = float("nan")
    pairs: int = 0
    seconds: float = float("nan")  # per target
    skipped: str = ""  # why it could not run (missing weights, say)

    @property
    def name(self) -> str:
        options = ",".join(f"{k}={v}" for k, v in self.method.items() if k not in ("backbone", "segmenter"))
        return f"{self.method['backbone']}{f'[{options}]' if options else ''}/{self.method['segmenter']}"


def parse_candidates(backbones: list[str], segmenters: list[str]) -> list[dict]:
    """Candidate methods: every backbone (``name`` or ``name:layer=9:facet=key``) with every segmenter."""
    out = []
    for spec in backbones:
        name, *parts = spec.split(":")
        options: dict = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or key not in METHOD_KEYS or key in ("backbone", "segmenter"):
                raise MedshotError(f"backbone option '{part}' in '{spec}' is not layer=, facet=, stride= or log_bin=")
            options[key] = value if key == "facet" else (value.lower() in ("1", "true", "yes") if key == "log_bin"
                                                          else int(value))
        out += [{"backbone": name, **options, "segmenter": seg} for seg in segmenters]
    # a candidate named twice is one candidate: "classical,classical" compares nothing
    seen: set = set()
    unique = []
    for method in out:
        key = tuple(sorted(method.items()))
        if key not in seen:
            seen.add(key)
            unique.append(method)
    return unique


def score_choice(choice: Choice, templates: list[Template], weights: str | None = None) -> Choice:
    """Run one candidate leave-one-template-out on ``templates`` (fills ``choice``'s numbers in)."""
    from ..features import get_backbone
    from ..pipeline import OneShot
    from ..segment import check_segmenter, get_segmenter

    method = choice.method
    options = {k: method[k] for k in ("layer", "facet", "stride", "log_bin") if k in method}
    try:
        check_segmenter(method["segmenter"], templates[0].ndim)
        backbone = get_backbone(method["backbone"], **options, **({"weights": weights} if weights else {}))
        segmenter = get_segmenter(method["segmenter"])
    except MedshotError as exc:
        choice.skipped = str(exc)
        return choice
    dices, neds, seconds = [], [], []
    for i, template in enumerate(templates):
        shot = OneShot(template, backbone=backbone, segmenter=segmenter)
        for j, truth in enumerate(templates):
            if i == j:
                continue
            start = time.perf_counter()
            result = shot.run(truth.image, landmarks=bool(template.landmarks),
                              masks=template.mask is not None or bool(template.prompts))
            seconds.append(time.perf_counter() - start)
            if result.label_map is not None and truth.mask is not None:
                # compared in the mask files' values: templates may number their labels differently inside
                found = file_label_values(result.label_map, template.label_values)
                expected = file_label_values(truth.mask, truth.label_values)
                dices.append(float(np.mean(list(dice_per_label(found, expected).values()))))
            names = {lm.name: lm.point for lm in truth.landmarks}
            common = [lm for lm in result.landmarks if lm.name in names]
            if common:
                ned = normalized_distance(np.array([lm.point for lm in common]),
                                          np.array([names[lm.name] for lm in common]), truth.image.shape)
                neds.append(float(np.median(ned)))
    choice.pairs = len(seconds)
    choice.mean_dice = float(np.mean(dices)) if dices else float("nan")
    choice.median_ned = float(np.median(neds)) if neds else float("nan")
    choice.seconds = float(np.mean(seconds)) if seconds else float("nan")
    return choice


def best_choice(choices: list[Choice]) -> Choice:
    """The candidate with the best mean Dice, then the smallest median NED, then the earliest."""
    ran = [c for c in choices if not c.skipped and c.pairs]
    if not ran:
        raise MedshotError("no candidate method could run: " + "; ".join(f"{c.name}: {c.skipped}" for c in choices))

    def key(item):
        index, c = item
        dice = -c.mean_dice if np.isfinite(c.mean_dice) else np.inf
        ned = c.median_ned if np.isfinite(c.median_ned) else np.inf
        return (round(dice, 3), round(ned, 4), index)

    return min(enumerate(ran), key=key)[1]


def made_a_choice(choices: list[Choice]) -> bool:
    """Whether at least two candidates ran, so that the best of them was chosen over another."""
    return sum(1 for c in choices if not c.skipped and c.pairs) >= 2


def select_method(templates: list[Template], candidates: list[dict], weights: str | None = None,
                  progress=None) -> tuple[Choice, list[Choice]]:
    """Score every candidate method leave-one-template-out; the best one and all of them.

    Parameters
    ----------
    templates : list of Template
        At least two, of the same anatomy, all 2D images or all volumes.
    candidates : list of dict
        Methods as :func:`parse_candidates` gives them.
    progress : callable, optional
        Called with each :class:`Choice` once it is scored.
    """
    if len(templates) < 2:
        raise MedshotError("select needs at least two annotated templates (each is the others' target in turn)")
    if len({t.ndim for t in templates}) > 1:
        raise MedshotError("the templates mix 2D images and volumes")
    choices = []
    for method in candidates:
        choice = score_choice(Choice(dict(method)), templates, weights)
        choices.append(choice)
        if progress is not None:
            progress(choice)
    return best_choice(choices), choices
