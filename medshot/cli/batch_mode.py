"""Batch mode on the command line: pass 1 and each round of :mod:`medshot.pipeline.batch` as a batch of its own.

Each stage runs through :func:`medshot.cli.batch.run_batch` (workers, Dask, ``--resume``, failures
isolated, every finished target committed) into ``--out/.medshot-batch/<stage>/``: per target what
that stage found (``<stem>.found.pkl``, without the image) and, after pass 1, the target's whole-image
signature (``<stem>.sig.npy``). Between stages this process reads only the confidences and signatures
and plans the next round exactly as :meth:`Batch.propagate` does (:class:`medshot.pipeline.batch.Plan`).
A stage's settings include the plan and the digests of the pseudo-templates it uses, so ``--resume``
redoes a target whenever what it depends on changed. The last stage writes the usual outputs, whose
``templates`` column names the original template and the pseudo-templates that counted.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import hashlib
import io
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import MedshotError
from ..match.signature import image_signature
from ..pipeline.batch import Batch, BatchOptions, Found, plan_of, too_few, unique_names
from ..pipeline.classifier import fold_of
from ..pipeline.result import score_status

BATCH_FOLDER = ".medshot-batch"
STAGE_HEADER = ["target", "confidence", "status", "reason"]


def add_options(p) -> None:
    g = p.add_argument_group("batch mode (one template, several targets)")
    g.add_argument("--batch-mode", choices=["auto", "off"], default="auto",
                   help="auto (default): with one template and at least --batch-min targets, confident targets "
                        "become extra templates for the others (see README, 'Batch mode'); off: each target alone")
    g.add_argument("--batch-min", type=int, default=BatchOptions.min_targets, metavar="N",
                   help=f"fewest targets for batch mode (default {BatchOptions.min_targets})")
    g.add_argument("--batch-neighbours", type=int, default=BatchOptions.neighbours, metavar="K",
                   help=f"pseudo-templates fused per target (default {BatchOptions.neighbours})")
    g.add_argument("--batch-rounds", type=int, default=BatchOptions.rounds, metavar="R",
                   help=f"rounds of matching again (default {BatchOptions.rounds})")
    g.add_argument("--batch-classifier", choices=["on", "off"], default="on" if BatchOptions.classifier else "off",
                   help="segment: refine the boundaries with a pixel classifier trained on the template and the "
                        "confident targets (default %(default)s; needs scikit-learn)")


def batch_options(args) -> BatchOptions | None:
    """The options of batch mode, or None when it is off (checked: a bad value is one error)."""
    if getattr(args, "batch_mode", "off") == "off":
        return None
    for name in ("batch_min", "batch_neighbours", "batch_rounds"):
        if getattr(args, name) < 1:
            raise MedshotError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    classifier = getattr(args, "batch_classifier", "off") == "on"
    if classifier and args.command == "segment":
        try:
            import sklearn  # noqa: F401
        except ImportError as exc:
            raise MedshotError("--batch-classifier on needs scikit-learn: pip install \"medshot[learn]\"") from exc
    return BatchOptions(min_targets=args.batch_min, neighbours=args.batch_neighbours, rounds=args.batch_rounds,
                        classifier=classifier)


@dataclass
class StageShot:
    """What a stage's workers need: the batch and where every earlier stage's results lie."""

    batch: Batch
    folder: Path  # --out/.medshot-batch
    stems: dict[str, str]  # target key -> its output stem
    names: dict[str, str]  # target key -> its name as a template (unique file name)
    latest: dict[str, str] = field(default_factory=dict)  # target key -> stage holding its latest result
    pool: dict[str, str] = field(default_factory=dict)  # pool member key -> stage of the result it joined with
    helpers: dict[str, list[str]] = field(default_factory=dict)  # target key -> its pool members this round
    current: str = ""  # the final stage: the target being written
    reasons: dict[str, str] = field(default_factory=dict)  # target key -> why a stage failed for it
    classifier: tuple[str, str] | None = None  # the final stage: the pixel classifier's file and digest

    @property
    def ndim(self) -> int:
        return self.batch.shot.ndim

    # what the output writers ask of a shot
    @property
    def template(self):
        return self.batch.shot.template

    @property
    def templates(self) -> list:
        return [self.batch.shot.template]

    @property
    def window(self):
        return self.batch.shot.window

    def load(self, target):
        return self.batch.shot.load(target)

    def found(self, key: str, stage: str | None = None, image=None, with_image: bool = True) -> Found:
        """A stage's result for target ``key`` (its latest by default), with its image (``image``: already
        loaded; ``with_image=False``: none, for a result whose image nobody will read)."""
        stage = stage or self.latest.get(key, "pass1")
        path = self.folder / stage / (self.stems[key] + ".found.pkl")
        if not path.is_file():
            reason = self.reasons.get(key) or f"batch mode: its {stage} result is missing (that stage failed for it)"
            raise MedshotError(reason, key)
        found = pickle.loads(path.read_bytes())
        if with_image:
            _attach(found, self.load(key) if image is None else image)
        return found

    def segment(self, image):
        result = self.found(self.current).result
        if self.classifier is not None:
            result = _classifier(*self.classifier).refine(result, fold_of(list(self.stems).index(self.current)))
        return result

    localize = segment

    def state(self) -> dict:
        """What the stages change: it travels with each target's work (:func:`staged`), while the rest of
        the shot (the batch, its template) stays in the workers from one stage to the next."""
        return {"latest": dict(self.latest), "pool": dict(self.pool), "helpers": dict(self.helpers),
                "reasons": dict(self.reasons), "classifier": self.classifier}


def staged(stage: StageShot, path: Path, work, state: dict) -> tuple[dict[str, bytes], list[list]]:
    """``work(stage, path)`` with the stage's ``state`` as the planning process left it."""
    for name, value in state.items():
        setattr(stage, name, value)
    return work(stage, path)


@functools.lru_cache(maxsize=1)
def _classifier(path: str, digest: str):
    """The pixel classifier a final stage refines with (read once per worker; ``digest`` keys the cache)."""
    return pickle.loads(Path(path).read_bytes())


def _attach(found: Found, image) -> None:
    found.result.image = image
    for result, _ in found.matched.values():
        result.image = image


def _dump(found: Found) -> bytes:
    bare = copy.copy(found)
    bare.result = copy.copy(found.result)
    bare.result.image = None
    bare.matched = {}
    for name, (result, local) in found.matched.items():
        r = copy.copy(result)
        r.image = None
        bare.matched[name] = (r, local)
    return pickle.dumps(bare, protocol=pickle.HIGHEST_PROTOCOL)


def _stage_files(stage: StageShot, key: str, found: Found) -> tuple[dict[str, bytes], list[list]]:
    c = found.confidence
    # repr: the next stage plans on exactly the confidence the API plans on
    return ({stage.stems[key] + ".found.pkl": _dump(found)},
            [[repr(float(c)), score_status(c), "" if score_status(c) == "ok" else "not confident enough to be a "
              "pseudo-template"]])


def first_work(stage: StageShot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """Pass 1 of one target: the original template alone, and the target's signature."""
    from ..data.read import check_contrast

    key = str(path)
    image = stage.load(path)
    check_contrast(image.array, path)
    found = stage.batch.first(image)
    files, rows = _stage_files(stage, key, found)
    buffer = io.BytesIO()
    np.save(buffer, image_signature(image, stage.window))
    files[stage.stems[key] + ".sig.npy"] = buffer.getvalue()
    return files, rows


def again_work(stage: StageShot, path: Path) -> tuple[dict[str, bytes], list[list]]:
    """One round for one target: pass 1 fused with its pool members' results in it."""
    key = str(path)
    first = stage.found(key, "pass1")
    latest = stage.found(key, image=first.result.image)
    # a helper's image is read only to build its pseudo-template, which this worker may already hold, and
    # only for a helper not matched with this target in an earlier round (volumes are costly to reread)
    helpers = [(stage.names[h], stage.found(h, stage.pool[h], with_image=stage.batch.needs_image(
        stage.names[h], latest.matched))) for h in stage.helpers[key]]
    return _stage_files(stage, key, stage.batch.again(first, helpers, latest.matched))


def final_work(stage: StageShot, path: Path, inner) -> tuple[dict[str, bytes], list[list]]:
    """The usual outputs of one target, from its last result in batch mode."""
    stage.current = str(path)
    return inner(stage, path)


def fallback(shot, files: list[Path], options: BatchOptions) -> str:
    """Why batch mode does not apply ('' when it does); the caller says so after the plain pass, so that a
    problem found before any work stays the one line printed."""
    from ..pipeline import OneShot

    if not isinstance(shot, OneShot):
        return "batch mode takes one template; with several, each target is matched with them all"
    if len(files) < options.min_targets:
        return too_few(len(files), options)
    return ""


def run_in_batch_mode(args, spec, shot, files: list[Path], stems: list[str], settings: dict,
                      options: BatchOptions) -> int:
    """``medshot segment/localize`` in batch mode (the caller checked :func:`fallback` first).

    ``stems``: each target's output stem, in the order of ``files``.
    """
    from .workers import local_workers

    keys = [str(f.resolve()) for f in files]
    stems = dict(zip(keys, stems))
    batch = Batch(shot, options, landmarks=spec.command == "localize", masks=spec.command == "segment")
    names = dict(zip(keys, unique_names([f.name for f in files])))
    stage = StageShot(batch, Path(args.out) / BATCH_FOLDER, stems, names)
    # one set of processes for every stage: started, and the shot sent, once (a cluster: each stage's
    # run_batch checks that the shot travels, before it touches its folder)
    workers = None if args.scheduler else local_workers(stage, args.workers, None, len(files))
    with workers or contextlib.nullcontext():
        return _stages(args, spec, stage, files, settings, options, workers or 1)


def _stages(args, spec, stage: StageShot, files: list[Path], settings: dict, options: BatchOptions,
            workers) -> int:
    """Pass 1, the rounds and the outputs, each a batch of its own (:func:`run_in_batch_mode`)."""
    from .batch import BatchSpec, run_batch

    keys, stems, shot = [str(f.resolve()) for f in files], stage.stems, stage.batch.shot
    run = functools.partial(run_batch, resume=args.resume, workers=workers, scheduler=args.scheduler,
                            quiet=args.quiet)
    batch_settings = {**settings, "batch": {"neighbours": options.neighbours, "rounds": options.rounds,
                                            "min_confidence": options.min_confidence,
                                            "pool": options.pool, "consensus": options.consensus}}

    def stage_spec(name: str, work) -> BatchSpec:
        return BatchSpec(f"{spec.command} {name}", "found.csv", STAGE_HEADER,
                         functools.partial(staged, work=work, state=stage.state()), spec.unit)

    run(stage_spec("pass1", first_work), stage, files, stage.folder / "pass1", {**batch_settings, "stage": "pass1"})
    confidences = _confidences(stage.folder / "pass1", keys, stems, stage.reasons)
    signatures = [_signature(stage.folder / "pass1", stems[k]) for k in keys]
    plan = plan_of(signatures, confidences, options, image_signature(shot.template.image, shot.window))
    stage.pool = {keys[i]: "pass1" for i in plan.pool}
    while (helpers := plan.next()) is not None:
        name = f"round{plan.round}"
        stage.helpers = {keys[i]: [keys[j] for j in helpers[i]] for i in helpers}
        todo = [files[i] for i in sorted(helpers)]
        depends = {k: [[h, stage.pool[h], _digest(stage.folder / stage.pool[h] / (stems[h] + ".found.pkl"))]
                       for h in hs] for k, hs in stage.helpers.items()}
        run(stage_spec(name, again_work), stage, todo, stage.folder / name,
            {**batch_settings, "stage": name, "depends": _digest_text(json.dumps(depends, sort_keys=True))})
        again = _confidences(stage.folder / name, keys, stems, stage.reasons)
        done = {i: again[i] for i in helpers if np.isfinite(again[i])}
        for i in done:
            stage.latest[keys[i]] = name
        for i in plan.record(done):
            stage.pool[keys[i]] = name
    print(f"{spec.command}: {plan.summary()}", file=sys.stderr)
    stage.classifier = _train(stage, keys) if spec.command == "segment" and options.classifier else None
    final = BatchSpec(spec.command, spec.table, [*spec.header[:-2], "templates", *spec.header[-2:]],
                      functools.partial(staged, work=functools.partial(final_work, inner=spec.work),
                                        state=stage.state()), spec.unit)
    final_settings = {**batch_settings, "classifier": stage.classifier and stage.classifier[1],
                      "latest": _digest_text(json.dumps(
        {k: [stage.latest.get(k, "pass1"), _digest(stage.folder / stage.latest.get(k, "pass1") /
                                                   (stems[k] + ".found.pkl"))] for k in keys}, sort_keys=True))}
    return run(final, stage, files, args.out, final_settings)


def _train(stage: StageShot, keys: list[str]) -> tuple[str, str] | None:
    """The pixel classifier trained on the template and the pool (``classifier.pkl`` beside the stages),
    and the digest of what it learned from; None when there is nothing to learn from."""
    from ..data.write import write_bytes_atomic

    members = sorted(stage.pool, key=keys.index)
    # each member's final result, as the Python API trains on
    latest = {k: stage.latest.get(k, "pass1") for k in members}
    learned = [[k, latest[k], _digest(stage.folder / latest[k] / (stage.stems[k] + ".found.pkl"))] for k in members]
    model = stage.batch.train_classifier({keys.index(k): stage.found(k, latest[k]).result for k in members})
    if model is None:
        return None
    path = stage.folder / "classifier.pkl"
    write_bytes_atomic(path, pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    width = stage.batch.options.classifier_width
    return str(path), _digest_text(json.dumps([width, learned]))


def _confidences(folder: Path, keys: list[str], stems: dict[str, str], reasons: dict[str, str]) -> list[float]:
    """Each target's confidence from a stage's table (NaN: failed or absent; ``reasons`` gets why it failed)."""
    rows = {}
    table = folder / "found.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                rows[row["target"]] = row
    out = []
    for k in keys:
        row = rows.get(k)
        ok = row is not None and row["status"] != "failed" and row["confidence"] not in ("", None) \
            and (folder / (stems[k] + ".found.pkl")).is_file()
        out.append(float(row["confidence"]) if ok else float("nan"))
        if row is not None and row["status"] == "failed" and row.get("reason"):
            reasons.setdefault(k, row["reason"])
    return out


def _signature(folder: Path, stem: str) -> np.ndarray | None:
    path = folder / (stem + ".sig.npy")
    return np.load(path) if path.is_file() else None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _digest_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
