"""Several templates of the same structures: each target matched with each, the results fused.

``OneShot([t1, t2, t3], ...)`` builds a :class:`Ensemble`: one :class:`~medshot.pipeline.OneShot`
per template (each template's features computed once), sharing one backbone and one segmenter.
Per target every template is matched and all are fused (:mod:`medshot.pipeline.fusion`). With
``top_k`` every template is matched only up to its verified affine choice (pose search, refined
candidates, verification: no deformation), the templates are ranked by that choice's verification
score, and only the K best are deformed, carry their annotations and are fused, so K saves the
deformations, the carrying, the scoring and the fusion of the others.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..data.image import Image
from ..data.template import Template
from ..features import Backbone, get_backbone
from ..segment import Segmenter, check_segmenter, get_segmenter
from .fusion import FUSIONS, fuse_label_maps, fuse_scores, geometric_median, local_agreement, on_image, relative_weights
from .oneshot import OneShot
from .result import LandmarkResult, TargetResult, score_status


class Ensemble:
    """Find several templates' landmarks and structures in new images or volumes, fused.

    Parameters
    ----------
    templates : list of Template
        Images (or volumes) of the same anatomy annotated alike: the same label values and landmark
        names (a label or landmark some templates lack is fused from those that have it).
    backbone, segmenter
        As for :class:`~medshot.pipeline.OneShot`; built once and shared.
    top_k : int, optional
        Per target, fuse only the K templates whose affine correspondences verify best (default: all).
    fusion : {"local", "vote"}
        Label maps: a vote weighted per template and per pixel by local agreement (``"local"``), or
        per template only (``"vote"``).
    **options
        Passed to every :class:`~medshot.pipeline.OneShot`.
    """

    def __init__(self, templates: list[Template], backbone: str | Backbone = "classical",
                 segmenter: str | Segmenter = "classical", top_k: int | None = None, fusion: str = "local",
                 backbone_options: dict | None = None, **options):
        templates = list(templates)
        if not templates:
            raise MedshotError("no template given")
        dims = {t.ndim for t in templates}
        if len(dims) > 1:
            raise MedshotError("the templates mix 2D images and volumes")
        if fusion not in FUSIONS:
            raise MedshotError(f"unknown fusion '{fusion}' (one of {', '.join(FUSIONS)})")
        if top_k is not None and top_k < 1:
            raise MedshotError(f"top_k must be at least 1, got {top_k}")
        self.ndim = templates[0].ndim
        if isinstance(backbone, str):
            backbone = get_backbone(backbone, **(backbone_options or {}))
        if isinstance(segmenter, str):
            check_segmenter(segmenter, self.ndim)
            segmenter = get_segmenter(segmenter)
        self.members = [OneShot(t, backbone=backbone, segmenter=segmenter, **options) for t in templates]
        self.top_k = top_k
        self.fusion = fusion

    # What the CLI and napari ask of a OneShot: the first template stands for the label values and names.
    @property
    def template(self) -> Template:
        return self.members[0].template

    @property
    def templates(self) -> list[Template]:
        return [m.template for m in self.members]

    @property
    def window(self):
        return self.members[0].window

    @property
    def segmenter(self) -> Segmenter:
        return self.members[0].segmenter

    def load(self, target: str | Path | Image | np.ndarray) -> Image:
        return self.members[0].load(target)

    def localize(self, target) -> TargetResult:
        return self.run(target, landmarks=True, masks=False)

    def segment(self, target) -> TargetResult:
        return self.run(target, landmarks=False, masks=True)

    def run(self, target, landmarks: bool = True, masks: bool = True) -> TargetResult:
        """Landmarks and/or label map for one target, fused over the (top K) templates.

        The result's ``templates`` maps each template's image name to its weight in the fusion
        (0 for a template left out by ``top_k``).
        """
        start = time.perf_counter()
        image = self.load(target)
        kept, order = self.match(image)
        results = [m.carry(stage, prepared, corr, landmarks, masks) for m, stage, prepared, corr in kept]
        local = None
        if masks and self.fusion == "local":
            local = [on_image(local_agreement(stage.work, prepared.work, corr.backward), prepared.grid, image.shape)
                     for _, stage, prepared, corr in kept]
        names = template_names(self.templates)
        fused = fuse_results(image, results, [names[i] for i in order], local)
        fused.templates = {name: 0.0 for name in names} | fused.templates
        fused.seconds = time.perf_counter() - start
        return fused

    def match(self, image: Image) -> tuple[list[tuple], np.ndarray]:
        """Every template matched with ``image``: ``(member, stage, prepared, correspondence)`` for the
        templates kept, and their indices in ``self.members``, best verified first.

        With ``top_k`` below the number of templates, templates are ranked on the verification score of
        their affine choice (the score that picked it among the candidates, before any deformation) and
        only the K best are deformed: a deformation is kept only where it verifies better than that
        affine, so it moves a template's score up a little and seldom changes the order.
        """
        cheap = self.top_k is not None and self.top_k < len(self.members)
        matched = [(m, *m.correspond(image, deform=not cheap)) for m in self.members]
        order = np.argsort([-corr.score for _, _, _, corr in matched], kind="stable")[:self.top_k or len(matched)]
        kept = [matched[i] for i in order]
        if cheap:
            kept = [(m, stage, prepared, m.deform(stage, prepared, corr)) for m, stage, prepared, corr in kept]
            # in the order full matching gives the same templates (final score, then template order), so
            # the fused result is the one full matching gives wherever both keep the same K
            again = sorted(range(len(kept)), key=lambda i: (-kept[i][3].score, order[i]))
            kept, order = [kept[i] for i in again], order[again]
        return kept, order


# ``OneShot([t1, t2, ...])`` builds an Ensemble; oneshot.py cannot import this module, which imports it.
# The package's __init__ imports this module, so the link is made before any OneShot is built.
OneShot.several = Ensemble


def template_names(templates: list[Template]) -> list[str]:
    """Each template's image file name (``name#2`` etc. where names repeat): how results name them."""
    names = [Path(t.image_path).name for t in templates]
    return [n if names.count(n) == 1 else f"{n}#{names[:i + 1].count(n)}" for i, n in enumerate(names)]


def fuse_results(image: Image, results: list[TargetResult], names: list[str],
                 local: list[np.ndarray] | None = None, prior: list[float] | None = None) -> TargetResult:
    """One target's results from several templates fused into one (see :mod:`medshot.pipeline.fusion`).

    Parameters
    ----------
    image : Image
        The target.
    results : list of TargetResult
        One per template, on ``image``'s grid.
    names : list of str
        The templates' names, in the order of ``results``.
    local : list of ndarray, optional
        Per template, its local agreement with the target on ``image``'s grid (``None``: a plain vote).
    prior : list of (float or dict), optional
        Per template, a factor on its weights (batch mode: a pseudo-template's own confidence; default 1),
        or per label value and landmark name (a label or landmark it lacks: 0).
    """
    prior = [1.0] * len(results) if prior is None else list(prior)
    fused = TargetResult(image, correspondence_score=max(r.correspondence_score for r in results),
                         correspondence="fused")
    overall = np.zeros(len(results))
    if any(r.label_map is not None for r in results):
        labels = sorted({lab for r in results for lab in r.scores})
        per_label = {lab: np.array([prior_factor(p, lab) for p in prior])
                     * relative_weights([r.scores.get(lab, np.nan) for r in results]) for lab in labels}
        weights = [{lab: float(per_label[lab][i]) for lab in labels if lab in results[i].scores}
                   for i in range(len(results))]
        maps = [r.label_map if r.label_map is not None else np.zeros(image.shape, np.uint8) for r in results]
        fused.label_map = fuse_label_maps(maps, weights, local)
        fused.scores = {lab: fuse_scores([r.scores.get(lab, np.nan) for r in results], per_label[lab])
                        for lab in labels}
        fused.reasons = {lab: "" if score_status(fused.scores[lab]) == "ok" else
                         _heaviest_reason([r.reasons.get(lab, "") for r in results], per_label[lab])
                         for lab in labels}
        overall += [np.mean(list(w.values())) if w else 0.0 for w in weights]
    if any(r.landmarks for r in results):
        fused.landmarks = _fuse_landmarks(image, results, prior)
        own = [np.mean([prior_factor(p, lm.name) for lm in r.landmarks]) if r.landmarks else 0.0
               for p, r in zip(prior, results)]
        overall += np.array(own) * relative_weights([np.nanmean([lm.confidence for lm in r.landmarks])
                                                     if r.landmarks else np.nan for r in results])
    total = overall.sum()
    fused.templates = {name: float(w / total if total > 0 else 1 / len(results)) for name, w in zip(names, overall)}
    return fused


def prior_factor(prior: float | dict, key: int | str) -> float:
    """A template's factor on its weight for one label value or landmark name (:func:`fuse_results`)."""
    return float(prior.get(key, 0.0)) if isinstance(prior, dict) else float(prior)


def _fuse_landmarks(image: Image, results: list[TargetResult], prior: list) -> list[LandmarkResult]:
    names = list(dict.fromkeys(lm.name for r in results for lm in r.landmarks))
    out = []
    for name in names:
        found = [lm for r in results for lm in r.landmarks if lm.name == name]
        own = np.array([prior_factor(p, name) for r, p in zip(results, prior) for lm in r.landmarks if lm.name == name])
        conf = np.array([lm.confidence for lm in found], float)
        relative = own * relative_weights(conf)
        weights = relative * np.where(np.isfinite(conf), np.maximum(conf, 1e-3), 1.0)
        point = geometric_median(np.array([lm.point for lm in found]), weights)
        mutual = float(np.sum(weights * [lm.mutual for lm in found])) >= 0.5 * float(weights.sum())
        score = fuse_scores(conf, relative)
        reason = "" if not np.isfinite(score) or score_status(score) == "ok" else \
            _heaviest_reason([lm.reason for lm in found], relative)
        out.append(LandmarkResult(name, point, image.index_to_world(point[None])[0], score, mutual, reason))
    return out


def _heaviest_reason(reasons: list[str], weights: np.ndarray) -> str:
    """A fused low score's reason: that of the template which counted most, else a general one."""
    best = reasons[int(np.argmax(weights))] if len(reasons) else ""
    return best or "every template's result is uncertain"
