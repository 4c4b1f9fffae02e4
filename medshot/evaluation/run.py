"""``medshot evaluate``: every template x target x method of a labelled dataset, resumable.

A dataset is a folder (``images/`` plus ``masks/`` and/or landmarks) or a manifest file listing
the cases (see ``docs/evaluate.md``), of 2D images or of 3D volumes. Each selected template is run
against every other case with each medshot backbone x segmenter combination that can run here and
with the SimpleITK atlas-registration baselines, on the same pairs. One row per template x target
x method x label (or landmark) is appended to ``cases.csv`` as soon as a case finishes; a rerun
skips the cases already there. ``summary.csv``, the plots and ``report.html`` are then made from
``cases.csv`` alone (:mod:`medshot.evaluation.report`), so a resumed run reports exactly what an
uninterrupted one does. What differs between images and volumes is the data kind's runner
(:mod:`medshot.evaluation.runner`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core.errors import MedshotError, one_line
from ..data.write import atomic_path, write_text_atomic
from .cases import Dataset
from .dataset import discover_dataset
from .memory import MemoryProbe
from .plan import Method, Skipped, parse_list, plan_cases, resolve_methods, select_templates, split_cases
from .runner import Runner, runner_for
from .scoring import failure_rows, score_case
from .store import (
    append_case,
    case_key,
    case_lines,
    cases_header,
    failed_cases,
    read_cases,
    without_failed,
    write_cases,
)

# Settings that change a case's numbers: a rerun into the same folder must use the same ones.
RESULT_SETTINGS = ("data", "work_size", "window", "split")
KIND_WORDS = {"2d": "2D images", "3d": "3D volumes"}


@dataclass
class EvaluationConfig:
    """Everything ``medshot evaluate`` takes (see ``medshot evaluate --help``).

    ``work_size`` (pixels) sets the 2D matching grid; volumes use the volume pipeline's own
    grids. ``window`` (low, high) is an intensity window such as CT HU, for images and volumes.
    """

    data: Path
    out: Path
    backbones: list[str] = field(default_factory=lambda: ["classical"])
    segmenters: list[str] = field(default_factory=lambda: ["classical"])
    baselines: list[str] = field(default_factory=lambda: ["identity", "affine", "bspline"])
    templates: str = "first"
    template_choice: str = "spread"
    split: str = "all"
    max_targets: int | None = None
    work_size: int = 256
    window: tuple[float, float] | None = None
    restart: bool = False
    progress: bool = True


@dataclass
class EvaluationResult:
    """What a run did: where, on which dataset, which methods ran or were skipped, and case counts."""

    out: Path
    dataset: Dataset
    methods: list[Method]
    skipped: list[Skipped]
    planned: int
    resumed: int
    failed: int
    files: list[Path]
    failed_by_method: dict[str, int] = field(default_factory=dict)


def run_evaluation(config: EvaluationConfig) -> EvaluationResult:
    """Run (or resume) an evaluation and write its report; see the module docstring.

    Every input is checked before anything is written; a problem raises :class:`MedshotError`.
    """
    from .report import ReportContext, prediction_path, write_report

    dataset = discover_dataset(config.data)
    runner = runner_for(dataset.kind, config.window, config.work_size)
    templates = select_templates(split_cases(dataset.names, config.split), config.templates, config.template_choice)
    if dataset.has_masks:
        empty = [t for t in templates if not dataset.case(t).labels]
        if empty:
            raise MedshotError(f"template case(s) {', '.join(empty)} have an empty mask; choose other templates",
                               dataset.case(empty[0]).mask)
    methods, skipped = resolve_methods(config.backbones, config.segmenters, config.baselines, dataset.has_masks,
                                       runner)
    if not methods:
        raise MedshotError("nothing to run: no requested backbone/segmenter is available and no baseline is asked "
                           "for" + "".join(f"; {s.name}: {s.reason}" for s in skipped))
    if config.max_targets is not None and config.max_targets < 1:
        raise MedshotError(f"--max-targets must be at least 1, got {config.max_targets}")
    plan = plan_cases(dataset, templates, methods, config.max_targets, config.split)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MedshotError("output path exists and is not a folder", out)
    settings = {"data": str(Path(config.data).resolve()), "work_size": int(config.work_size),
                "window": list(config.window) if config.window else None, "split": config.split}
    cases_path, run_path, predictions = out / "cases.csv", out / "run.json", out / "predictions"
    header = cases_header(list(runner.point_columns))
    if config.restart:
        for p in (cases_path, run_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(predictions, ignore_errors=True)
    # Cases of another medshot version are recomputed, as `medshot segment --resume` reruns its targets.
    other_version = _earlier_version(run_path, settings) if run_path.exists() else None
    # checks an earlier cases.csv before anything is written
    rows = [] if other_version is not None else read_cases(cases_path, header)

    out.mkdir(parents=True, exist_ok=True)
    if other_version is not None:
        print(f"medshot: {out} holds cases of medshot {other_version or '(unknown version)'}, not {__version__}: "
              "running them again", file=sys.stderr)
        run_path.unlink()
    if not run_path.exists():
        write_text_atomic(run_path, json.dumps({**settings, "medshot_version": __version__}, indent=1) + "\n")
    kept = without_failed(rows)  # failed cases are run again
    if other_version is not None or len(kept) < len(rows) or not cases_path.exists() \
            or cases_path.stat().st_size == 0:
        write_cases(cases_path, kept, header)
    done = {case_key(r) for r in kept}
    todo = [p for p in plan if (p[0], p[1], p[2].name) not in done]
    _print_skipped(skipped)
    probe = MemoryProbe()
    _run_cases(todo, len(plan), dataset, runner, config.progress, cases_path, predictions, probe)

    planned = {(t, g, m.name) for t, g, m in plan}
    rows = [r for r in read_cases(cases_path, header) if case_key(r) in planned]
    failed = [(*key, reason) for key, reason in failed_cases(rows).items()]

    def view(method: str, template: str, target: str):
        return runner.view(dataset.case(target),
                           prediction_path(predictions, method, template, target, runner.prediction_suffix))

    ctx = ReportContext(
        title=f"medshot evaluate: {dataset.root.parent.name}/{dataset.root.name}",
        methods=[m.name for m in methods],
        baselines=[m.name for m in methods if m.baseline],
        skipped=[(s.name, s.what, s.reason) for s in skipped],
        label_names=dataset.label_names,
        view=view,
        memory_probe=probe.kind,
        failures=failed,
        element=runner.element,
        settings={
            "dataset": str(dataset.root), "data": KIND_WORDS[dataset.kind], "cases": str(len(dataset.cases)),
            "templates": f"{config.templates} ({config.template_choice}): {', '.join(templates)}",
            "split": config.split,
            "targets per template": str(len(plan) // max(1, len(templates) * len(methods))),
            "work size": str(config.work_size) if dataset.kind == "2d" else "automatic (volume pipeline)",
            "window": str(config.window or "robust percentiles"),
        },
    )
    files = write_report(out, rows, ctx)
    by_method = {m.name: sum(1 for f in failed if f[2] == m.name) for m in methods}
    return EvaluationResult(out, dataset, methods, skipped, len(plan), len(plan) - len(todo), len(failed), files,
                            {name: n for name, n in by_method.items() if n})


def _run_cases(todo: list[tuple[str, str, Method]], total: int, dataset: Dataset, runner: Runner, progress: bool,
               cases_path: Path, predictions: Path, probe: MemoryProbe) -> list[tuple[str, str, str, str]]:
    """Run the pending cases, appending each to cases.csv (a failure too); returns the failures."""
    from tqdm import tqdm

    from .report import prediction_path

    failed: list[tuple[str, str, str, str]] = []
    bar = tqdm(total=total, initial=total - len(todo), desc="evaluate", unit="case", file=sys.stderr,
               disable=not progress or not todo, dynamic_ncols=True)
    header = cases_header(list(runner.point_columns))
    shots: dict[tuple[str, str], object] = {}
    current = None
    template = None
    template_labels: dict[int, str] = {}
    try:
        for t_name, g_name, method in todo:
            if t_name != current:
                shots.clear()  # one template's medshot objects at a time: they hold its features
                current = t_name
                template = runner.make_template(dataset.case(t_name), dataset.label_names)
                template_labels = runner.template_labels(template)
            bar.set_postfix_str(f"{method.name} {t_name}->{g_name}", refresh=False)
            target = dataset.case(g_name)
            start, peak = time.perf_counter(), 0.0
            try:
                key = (method.backbone, method.segmenter)
                if key not in shots:
                    shots[key] = runner.make_shot(template, method.backbone, method.segmenter)
                probe.start()
                start = time.perf_counter()
                prediction = runner.predict(shots[key], target, dataset.has_landmarks, dataset.has_masks,
                                            method.baseline)
                seconds = time.perf_counter() - start
                peak = probe.stop()
                truth = runner.truth(target) if target.mask is not None and prediction.label_map is not None else None
                rows = score_case(prediction, template_labels, target, truth, runner.truth_points(target),
                                  dataset.label_names, runner.point_columns)
            except Exception as exc:  # noqa: BLE001 - one failing case must not sink the run
                # ... nor leave the means: it is stored, scored as a failure, and retried by a rerun
                message = one_line(f"{type(exc).__name__}: {exc}", 300)
                failed.append((t_name, g_name, method.name, message))
                bar.write(f"medshot: case {t_name} -> {g_name} with {method.name} failed: {message}", file=sys.stderr)
                rows = failure_rows(template_labels, [lm.name for lm in template.landmarks], target,
                                    dataset.has_masks and target.mask is not None, runner.truth_points(target),
                                    dataset.label_names, message)
                append_case(cases_path, case_lines(t_name, g_name, method.name, rows, time.perf_counter() - start,
                                                   peak, header))
                bar.update(1)
                continue
            if prediction.label_map is not None:
                path = prediction_path(predictions, method.name, t_name, g_name, runner.prediction_suffix)
                with atomic_path(path) as tmp:
                    runner.save_prediction(tmp, prediction, target)
            append_case(cases_path, case_lines(t_name, g_name, method.name, rows, seconds, peak, header))
            bar.update(1)
    finally:
        bar.close()
    return failed


def _earlier_version(run_path: Path, settings: dict) -> str | None:
    """None when the earlier run in ``run_path`` is this medshot version's, else its version ("" unknown).

    Raises
    ------
    MedshotError
        When the earlier run used other result settings (a rerun would mix numbers of two setups).
    """
    try:
        earlier = json.loads(run_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedshotError(f"cannot read the earlier run's settings ({exc}); use --restart", run_path) from exc
    for key in RESULT_SETTINGS:
        if earlier.get(key) != settings[key]:
            raise MedshotError(f"holds a run with {key} = {earlier.get(key)!r}, not {settings[key]!r}; "
                               "pass --restart to start over or choose another --out", run_path)
    version = earlier.get("medshot_version")
    return None if version == __version__ else str(version or "")


def _print_skipped(skipped: list[Skipped]) -> None:
    for s in skipped:
        print(f"medshot: skipping {s.what} {s.name}: {s.reason}", file=sys.stderr)


def run_from_args(args) -> int:
    """``medshot evaluate`` (argparse namespace from :func:`medshot.cli.build_parser`)."""
    config = EvaluationConfig(
        data=Path(args.data), out=Path(args.out), backbones=parse_list(args.backbones),
        segmenters=parse_list(args.segmenters), baselines=parse_list(args.baselines), templates=args.templates,
        template_choice=args.template_choice, split=args.split, max_targets=args.max_targets,
        work_size=args.work_size,
        window=tuple(args.window) if args.window else None, restart=args.restart, progress=not args.quiet,
    )
    try:
        result = run_evaluation(config)
    except KeyboardInterrupt:
        print(f"medshot: interrupted; finished cases stay in {config.out / 'cases.csv'}: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    print(f"wrote {result.out / 'report.html'}, summary.csv and cases.csv: {result.planned} cases "
          f"({result.resumed} from an earlier run, {result.failed} failed), "
          f"methods {', '.join(m.name for m in result.methods)}"
          + (f"; skipped {', '.join(s.name for s in result.skipped)}" if result.skipped else ""))
    if result.failed:
        per_method = ", ".join(f"{name} {n}" for name, n in result.failed_by_method.items())
        print(f"medshot: {result.failed} case(s) failed, scored as failures (status failed in cases.csv): "
              f"{per_method}", file=sys.stderr)
        return 1
    return 0
