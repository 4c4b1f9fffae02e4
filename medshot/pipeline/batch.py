"""Batch mode: one annotated template, and the unlabelled targets of the batch as extra templates.

A user with one annotated image usually has a folder of unlabelled images of the same kind. After a
first pass (the template alone on every target), the targets whose results score well become
*pseudo-templates* (their image with the label map and landmarks medshot found). Every target is then
matched again with the original template plus the few pseudo-templates most like it, and the results
are fused as several real templates are (:func:`medshot.pipeline.ensemble.fuse_results`). Targets
that became confident join the pool for the next round, so labels travel along a chain of similar
images (propagation) even where the template itself is too far from a target.

The rules that keep it honest:

- a target never serves as its own template, and the original template always counts (by default it
  weighs as much as its helpers together: ``BatchOptions.original_weight``);
- a pseudo-template's fusion weight is multiplied by its own score, and only targets whose every
  label and landmark scores at least ``min_confidence`` join the pool (``pool="label"``: a target joins
  with the labels and landmarks it is confident on, and weighs 0 for the others); outliers (another
  anatomy, a failed image: far from the template by whole-image signature, :func:`outliers`) never do;
- a pseudo-template keeps the result with which it joined the pool; rounds are synchronous, so the
  results are the same whatever the order or the number of workers;
- batches smaller than ``min_targets`` get the plain pass (``Batch.note`` says so).

Per target the work is: pass 1 (:meth:`Batch.first`), then per round at most ``neighbours``
pseudo-templates matched (the original template's pass-1 result and local agreement are reused).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.annotations import Landmark
from ..data.image import Image
from ..data.template import Template
from ..match.signature import image_signature
from .classifier import fold_of, train_classifier
from .ensemble import fuse_results, prior_factor
from .fusion import local_agreement, on_image
from .oneshot import OneShot
from .result import LOW_CONFIDENCE_SCORE, TargetResult

# Least drop in signature similarity (cosine) below the batch's median that makes an outlier. Within a
# development task a template's targets fall at most 0.01-0.22 below their median (median 0.05-0.10 per
# task; `python benchmarks/batch_mode.py --split tune --outliers`), and 2 of 324 real targets fall more
# than 0.15 below (they still get their results, they only give none); the other anatomy of the synthetic
# test falls 0.5 below.
OUTLIER_FLOOR = 0.15


@dataclass
class BatchOptions:
    """How batch mode runs.

    Attributes
    ----------
    min_targets : int
        Fewer targets than this get the plain pass: a pseudo-template needs other targets to come from.
    neighbours : int
        Pseudo-templates fused per target (besides the original template).
    rounds : int
        Rounds of matching again; each lets labels travel one more step from the template.
    min_confidence : float
        A target joins the pool of pseudo-templates when every label and landmark scores at least
        this (the ``ok`` bar of the results).
    pool : {"all", "label"}
        ``"all"``: a target joins the pool when all its labels and landmarks reach ``min_confidence``;
        ``"label"``: when one does, and it helps only with those that do (per-label weights in the fusion).
    consensus : bool
        Multiply each fused label score by how well the templates that reached the target agree on it.
    """

    min_targets: int = 4
    neighbours: int = 2
    rounds: int = 2
    min_confidence: float = LOW_CONFIDENCE_SCORE
    pool: str = "all"
    consensus: bool = True
    original_weight: float | None = None
    classifier: bool = False
    classifier_width: float = 0.05


@dataclass
class Found:
    """What one pass found in one target, and what later passes need of it.

    Attributes
    ----------
    result : TargetResult
    local : ndarray (M, N[, P]) uint8 or None
        The original template's local agreement with the target (x255), for fusion.
    confidence : float
        The lowest of its label scores and landmark confidences (0 when it found nothing).
    matched : dict
        Pseudo-template name -> its result in this target and local agreement (kept between rounds, so
        a round matches only the pseudo-templates that are new to the target).
    """

    result: TargetResult
    local: np.ndarray | None
    confidence: float
    matched: dict[str, tuple[TargetResult, np.ndarray | None]] = field(default_factory=dict)


def item_confidences(result: TargetResult) -> dict[int | str, float]:
    """Label value -> its score and landmark name -> its confidence (NaN counts 0)."""
    items = {**result.scores, **{lm.name: lm.confidence for lm in result.landmarks}}
    return {k: float(v) if np.isfinite(v) else 0.0 for k, v in items.items()}


def confidence_of(result: TargetResult, pool: str = "all") -> float:
    """How confident a result is as a pseudo-template: the weakest of its label scores and landmark
    confidences (``pool="all"``), or the strongest (``pool="label"``: it helps with what it is sure of);
    0 when it found nothing."""
    values = list(item_confidences(result).values())
    if not values:
        return 0.0
    return max(values) if pool == "label" else min(values)


def helper_weights(helper: Found, options: BatchOptions) -> float | dict[int | str, float]:
    """A pseudo-template's factor on its fusion weights: its confidence (``pool="all"``), or per label
    and landmark its own score, 0 where that is below ``min_confidence`` (``pool="label"``)."""
    if options.pool != "label":
        return helper.confidence
    return {k: c if c >= options.min_confidence else 0.0 for k, c in item_confidences(helper.result).items()}


def pseudo_template(template: Template, result: TargetResult, name: str) -> Template:
    """A target's result as a template: its image, the label map and landmarks found, the template's names."""
    landmarks = [Landmark(lm.name, np.asarray(lm.point, float)) for lm in result.landmarks]
    pseudo = Template.from_image(result.image, mask=result.label_map, labels=dict(template.labels),
                                 landmarks=landmarks, window=template.window)
    pseudo.image_path = Path(name)
    return pseudo


def nearest(similarity: np.ndarray, target: int, pool: list[int], k: int) -> list[int]:
    """The ``k`` members of ``pool`` (indices) most similar to ``target``, never ``target`` itself;
    ties go to the earlier index, so the choice does not depend on the pool's order."""
    members = sorted(i for i in pool if i != target)
    members.sort(key=lambda i: -similarity[target, i])
    return members[:k]


def consensus(maps: list[np.ndarray], weights: np.ndarray, fused: np.ndarray, label: int) -> float:
    """Weighted mean Dice of each template's ``label`` region with the fused one (NaN: none has it)."""
    fused_region = fused == label
    dices, used = [], []
    for label_map, w in zip(maps, weights):
        region = label_map == label
        total = region.sum() + fused_region.sum()
        if total == 0:
            continue
        dices.append(2.0 * np.logical_and(region, fused_region).sum() / total)
        used.append(w)
    if not used or float(np.sum(used)) <= 0:
        return float("nan")
    return float(np.average(dices, weights=used))


def _agreeing(value: float) -> float:
    # the same logistic step at Dice 0.5 as a segmenter's mask against the placed structure
    # (medshot.pipeline.confidence): results that half the templates contradict are likely wrong
    return float(1.0 / (1.0 + np.exp(-(value - 0.5) / 0.05)))


class Batch:
    """Batch mode around one template's :class:`OneShot` (``set_image`` once, targets many).

    Parameters
    ----------
    shot : OneShot
        The original template's shot; pseudo-templates are matched with :meth:`OneShot.like` of it.
    options : BatchOptions, optional
    landmarks, masks : bool
        What to find (``localize``: landmarks; ``segment``: masks).
    """

    def __init__(self, shot: OneShot, options: BatchOptions | None = None, landmarks: bool = True,
                 masks: bool = True):
        self.shot = shot
        self.options = options or BatchOptions()
        self.landmarks, self.masks = landmarks, masks
        self._pseudo: dict[str, OneShot] = {}
        self.note = ""
        self.history: list[list[TargetResult]] = []  # every target's result after each round
        self.plan: Plan | None = None  # the last run's

    def first(self, target) -> Found:
        """Pass 1: the original template alone."""
        start = time.perf_counter()
        result, local = self.match(self.shot, self.shot.load(target))
        result.seconds = time.perf_counter() - start
        result.templates = {self.name: 1.0}
        return Found(result, local, confidence_of(result, self.options.pool))

    def match(self, shot: OneShot, image: Image) -> tuple[TargetResult, np.ndarray | None]:
        """One template's result in ``image`` and its local agreement (x255, uint8; None without masks)."""
        stage, prepared, corr = shot.correspond(image)
        result = shot.carry(stage, prepared, corr, self.landmarks, self.masks)
        local = None
        if result.label_map is not None:
            agreement = on_image(local_agreement(stage.work, prepared.work, corr.backward), prepared.grid, image.shape)
            local = np.round(np.clip(agreement, 0, 1) * 255).astype(np.uint8)
        return result, local

    @property
    def name(self) -> str:
        return Path(self.shot.template.image_path).name

    def again(self, found: Found, helpers: list[tuple[str, Found]],
              matched: dict[str, tuple[TargetResult, np.ndarray | None]] | None = None) -> Found:
        """One target matched again: its pass-1 result ``found`` fused with what ``helpers`` (name,
        their pool entry) find in it; ``matched`` holds helpers matched with it in earlier rounds."""
        if not helpers:
            return found
        start = time.perf_counter()
        image = found.result.image
        matched = dict(matched or {})
        for name, helper in helpers:
            if name not in matched:
                matched[name] = self.match(self._helper_shot(name, helper), image)
        names = [self.name] + [name for name, _ in helpers]
        results = [found.result] + [matched[name][0] for name, _ in helpers]
        local = [found.local] + [matched[name][1] for name, _ in helpers]
        own = self.options.original_weight
        prior = [float(len(helpers)) if own is None else own] + [helper_weights(h, self.options) for _, h in helpers]
        maps_local = None
        if any(m is not None for m in local):
            maps_local = [None if m is None else m.astype(np.float32) / 255 for m in local]
        fused = fuse_results(image, results, names, maps_local, prior)
        if self.options.consensus and fused.label_map is not None:
            weights = np.array([fused.templates[n] for n in names])
            maps = [r.label_map if r.label_map is not None else np.zeros(image.shape, np.uint8) for r in results]
            for label, score in list(fused.scores.items()):
                # a template that does not count for the label (weight 0 for it) does not vote on agreement
                counts = np.array([prior_factor(p, label) > 0 for p in prior])
                agree = consensus(maps, weights * counts, fused.label_map, label)
                fused.evidence[f"consensus {label}"] = agree
                if np.isfinite(agree) and np.isfinite(score):
                    fused.evidence[f"score before consensus {label}"] = score
                    fused.scores[label] = score * _agreeing(agree)
                    if fused.scores[label] < LOW_CONFIDENCE_SCORE and not fused.reasons.get(label):
                        fused.reasons[label] = f"the templates that reach it disagree (Dice {agree:.2f})"
        fused.correspondence_score = found.result.correspondence_score
        # the target's time: pass 1 and this round (an earlier round's matches were reused)
        fused.seconds = found.result.seconds + time.perf_counter() - start
        return Found(fused, found.local, confidence_of(fused, self.options.pool), matched)

    def needs_image(self, name: str, matched: dict) -> bool:
        """Whether :meth:`again` will read pool member ``name``'s image (to build its pseudo-template),
        given what the target's earlier rounds ``matched``."""
        return name not in matched and name not in self._pseudo

    def _helper_shot(self, name: str, helper: Found) -> OneShot:
        if name not in self._pseudo:
            self._pseudo[name] = self.shot.like(pseudo_template(self.shot.template, helper.result, name))
        return self._pseudo[name]

    def run(self, targets: list, map_function=map) -> list[TargetResult]:
        """Every target's result in batch mode (in the order given).

        ``map_function(function, *iterables)`` runs one step over the targets (``map`` by default; any
        ordered parallel map gives the same results).
        """
        images = [self.shot.load(t) for t in targets]
        return self.propagate(list(map_function(self.first, images)), map_function)

    def propagate(self, found: list[Found], map_function=map) -> list[TargetResult]:
        """The rounds after pass 1 (``found``: :meth:`first` of every target, in order)."""
        images = [f.result.image for f in found]
        self.history = []
        if len(images) < self.options.min_targets:
            self.note = too_few(len(images), self.options)
            return [f.result for f in found]
        names = target_names(images)
        signatures = [image_signature(image, self.shot.window) for image in images]
        # as this batch's options count it (a pass 1 may come from a Batch with another ``pool``)
        confidences = [confidence_of(f.result, self.options.pool) for f in found]
        self.plan = plan = plan_of(signatures, confidences, self.options,
                                   image_signature(self.shot.template.image, self.shot.window))
        first, found = found, list(found)
        # a pseudo-template keeps the result with which it joined the pool
        pool = {i: found[i] for i in plan.pool}
        while (helpers := plan.next()) is not None:
            todo = sorted(helpers)
            again = map_function(self.again, [first[i] for i in todo],
                                 [[(names[j], pool[j]) for j in helpers[i]] for i in todo],
                                 [found[i].matched for i in todo])
            for i, f in zip(todo, again):
                found[i] = f
            self.history.append([f.result for f in found])
            pool |= {i: found[i] for i in plan.record({i: found[i].confidence for i in todo})}
        self.note = plan.summary()
        results = [f.result for f in found]
        # the pool members' final results (better than the ones they joined with; the benchmark measured these)
        model = self.train_classifier({i: found[i].result for i in pool})
        if model is not None:
            results = list(map_function(model.refine, results, [fold_of(i) for i in range(len(results))]))
        return results

    def train_classifier(self, pool: dict[int, TargetResult]):
        """The batch's :class:`~medshot.pipeline.classifier.PixelClassifier` from the pool members' results
        (position in the batch -> its final result), or None when it is off or has nothing to learn."""
        if not (self.options.classifier and self.masks and pool and self.shot.template.mask is not None):
            return None
        template = self.shot.template
        return train_classifier(template.image, template.mask, self.shot.window, pool, self.options.classifier_width)


def outliers(to_template: np.ndarray, failed: set[int] = frozenset()) -> set[int]:
    """Targets whose similarity to the template lies more than 3 robust standard deviations (1.4826 MAD)
    below the batch's median, and at least ``OUTLIER_FLOOR`` below it (so that a batch of near-copies does
    not call small differences outliers)."""
    usable = [i for i in range(len(to_template)) if i not in failed and np.isfinite(to_template[i])]
    if len(usable) < 3:
        return set()
    values = np.asarray(to_template, float)[usable]
    median = float(np.median(values))
    spread = max(3 * 1.4826 * float(np.median(np.abs(values - median))), OUTLIER_FLOOR)
    return {i for i, v in zip(usable, values) if v < median - spread}


def too_few(count: int, options: BatchOptions) -> str:
    """The note for a batch too small for batch mode."""
    return f"batch mode needs at least {options.min_targets} targets, got {count}: the plain pass"


class Plan:
    """Which pseudo-templates each target is matched with, round by round (the API and the CLI alike).

    Parameters
    ----------
    similarity : ndarray (T, T)
        The targets' :func:`similarity_matrix`.
    confidences : list of float
        Pass 1's :func:`confidence_of` per target (NaN: it failed, never a pseudo-template).
    options : BatchOptions
    to_template : ndarray (T,), optional
        Each target's signature similarity to the template's: targets far below the batch's usual
        similarity are outliers (another anatomy, a failed image), never pseudo-templates.
    """

    def __init__(self, similarity: np.ndarray, confidences: list[float], options: BatchOptions,
                 to_template: np.ndarray | None = None):
        self.similarity, self.options = similarity, options
        self.failed = {i for i, c in enumerate(confidences) if not np.isfinite(c)}
        self.outliers = set() if to_template is None else outliers(to_template, self.failed)
        # pool member -> the round it joined with (0: pass 1)
        self.pool = {i: 0 for i, c in enumerate(confidences) if c >= options.min_confidence and i not in self.outliers}
        self.chosen: list[list[int]] = [[] for _ in confidences]
        self.round = 0

    def next(self) -> dict[int, list[int]] | None:
        """Target -> its pool members for the next round (only targets whose members changed: a later
        round matches a target only with members new to it), or None when nothing changes."""
        if self.round >= self.options.rounds:
            return None
        todo = {}
        for i in range(len(self.chosen)):
            wanted = nearest(self.similarity, i, list(self.pool), self.options.neighbours)
            if i not in self.failed and wanted != self.chosen[i]:
                todo[i] = wanted
        if not todo:
            return None
        self.round += 1
        self._todo = todo
        return todo

    def record(self, confidences: dict[int, float]) -> list[int]:
        """After a round: each target's new confidence; returns the targets that join the pool."""
        for i in self._todo:
            self.chosen[i] = self._todo[i]
        joined = [i for i, c in sorted(confidences.items())
                  if i not in self.pool and i not in self.outliers and c >= self.options.min_confidence]
        self.pool |= {i: self.round for i in joined}
        return joined

    def summary(self) -> str:
        return (f"batch mode: {len(self.pool)} of {len(self.chosen)} targets served as pseudo-templates, "
                f"{self.round} round(s)")


def plan_of(signatures: list[np.ndarray | None], confidences: list[float], options: BatchOptions,
            template_signature: np.ndarray) -> Plan:
    """The :class:`Plan` of a batch from its targets' signatures (:func:`~medshot.match.signature.image_signature`;
    None: the target has none, as after a failed first pass; it is similar to nothing) and the template's."""
    have = [i for i, s in enumerate(signatures) if s is not None]
    similarity = np.full((len(signatures), len(signatures)), -np.inf)
    to_template = np.full(len(signatures), np.nan)
    if have:
        stacked = [signatures[i] for i in have]
        similarity[np.ix_(have, have)] = similarity_matrix(stacked)
        to_template[have] = np.array(stacked) @ template_signature
    return Plan(similarity, confidences, options, to_template)


def similarity_matrix(signatures: list[np.ndarray]) -> np.ndarray:
    """Cosine similarity ``(T, T)`` of the targets' :func:`~medshot.match.signature.image_signature`."""
    stacked = np.stack(signatures)
    return stacked @ stacked.T


def target_names(images: list[Image]) -> list[str]:
    """Each target's name as a pseudo-template: its file name (``target N`` for an array)."""
    return unique_names([Path(image.path).name if image.path else f"target {i + 1}" for i, image in enumerate(images)])


def unique_names(names: list[str]) -> list[str]:
    """``name#2``, ``name#3`` ... where names repeat."""
    return [n if names.count(n) == 1 else f"{n}#{names[:i + 1].count(n)}" for i, n in enumerate(names)]
