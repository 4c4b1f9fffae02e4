"""``medshot evaluate``: score methods and baselines on a labelled dataset (:mod:`medshot.evaluation`)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score methods and baselines on a labelled dataset (tables, plots, report)",
        description="Run every template x target x method of a labelled dataset and write cases.csv, summary.csv "
                    "and report.html. A rerun into the same --out resumes: finished cases of the same medshot "
                    "version are kept; failed ones and those of another version are run again.",
        epilog="exit status: 0 every case ran; 1 at least one case failed (it is a row of cases.csv with status "
               "failed and its reason, scored as a failure: Dice 0, NED 1; the report is written); 2 bad input, "
               "nothing run; 130 interrupted (finished cases kept: run the same command to resume)")
    p.add_argument("--data", required=True,
                   help="dataset folder (images/ + masks/ and/or landmarks.csv; 2D images or 3D volumes) or manifest "
                        ".csv/.json")
    p.add_argument("--out", required=True, help="report folder (cases.csv, summary.csv, report.html, PNGs)")
    p.add_argument("--backbones", default="classical", help="comma-separated backbones, or 'all' (default: classical)")
    p.add_argument("--segmenters", default="classical",
                   help="comma-separated segmenters, or 'all' (default: classical; volumes: classical, "
                        "randomwalker)")
    p.add_argument("--baselines", default="identity,affine,bspline",
                   help="comma-separated atlas-registration baselines (identity, affine, demons, bspline, syn; "
                        "images and volumes alike), or 'none' (default: identity,affine,bspline)")
    p.add_argument("--templates", default="first", help="first | all (leave-one-out) | K (default: first)")
    p.add_argument("--template-choice", choices=["spread", "first"], default="spread",
                   help="how --templates K picks: spread evenly over the sorted cases, or the first K")
    p.add_argument("--split", choices=["all", "tune", "report"], default="all",
                   help="use one half of the cases (sorted by name, dealt alternately: tune = 1st, 3rd, ...; "
                        "report = 2nd, 4th, ...) as templates and targets, so that parameters chosen on one "
                        "half are reported on the other (default: all)")
    p.add_argument("--max-targets", type=int, default=None, help="at most N targets per template (quick runs)")
    p.add_argument("--work-size", type=int, default=256,
                   help="longest side of the matching grid (pixels; images only)")
    p.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="intensity window, e.g. CT HU -160 240 (default: robust percentiles per image)")
    p.add_argument("--restart", action="store_true", help="discard an earlier run in --out instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.run import run_from_args

    return run_from_args(args)


COMMANDS = {"evaluate": cmd_evaluate}
