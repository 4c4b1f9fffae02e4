"""``medshot select``: choose the backbone and segmenter on the user's own templates, and write the choice into them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..core.errors import MedshotError


def add_parser(sub) -> None:
    p = sub.add_parser("select", help="choose backbone and segmenter by leave-one-template-out on your templates",
                       description="Score every backbone x segmenter candidate leave-one-template-out and write "
                                   "the best into the templates' \"method\". With one candidate (or only one "
                                   "that can run) nothing is chosen and nothing is written.")
    p.add_argument("--template", required=True, action="append",
                   help="template JSON; give two or more (each is the others' target in turn)")
    p.add_argument("--backbones", default="classical",
                   help="comma-separated candidates, each NAME or NAME:layer=9:facet=key (default: classical)")
    p.add_argument("--segmenters", default="classical", help="comma-separated candidates (default: classical)")
    p.add_argument("--weights", default=None, help="backbone weights folder (the Hugging Face cache otherwise)")
    p.add_argument("--no-write", action="store_true",
                   help="print the table and the choice; leave the templates as they are")


def _row(choice) -> str:
    if choice.skipped:
        return f"{choice.name:<40} skipped: {choice.skipped}"

    def fmt(v, spec):
        return format(v, spec) if v == v else "-"

    return (f"{choice.name:<40} {choice.pairs:>5} {fmt(choice.mean_dice, '.3f'):>9} "
            f"{fmt(choice.median_ned, '.4f'):>10} {fmt(choice.seconds, '.2f'):>9}")


def _write_method(path: Path, method: dict) -> None:
    """Set the template JSON's ``method`` entry, keeping every other entry and the file's mode."""
    from ..data.write import write_text_atomic

    spec = json.loads(path.read_text())
    spec["method"] = method
    mode = path.stat().st_mode & 0o777
    write_text_atomic(path, json.dumps(spec, indent=1) + "\n")
    os.chmod(path, mode)


def cmd_select(args: argparse.Namespace) -> int:
    from ..data.template import Template
    from ..evaluation.plan import parse_list
    from ..evaluation.select import made_a_choice, parse_candidates, select_method

    paths = [Path(p) for p in args.template]
    templates = [Template.load(p) for p in paths]
    candidates = parse_candidates(parse_list(args.backbones), parse_list(args.segmenters))
    if not args.no_write and len(candidates) > 1:  # one candidate is never written (see below)
        for p in paths:  # before hours of work, not after
            if not os.access(p, os.W_OK):
                raise MedshotError("cannot write the choice into this template (no write permission; "
                                   "use --no-write)", p)
    print(f"{'method':<40} {'pairs':>5} {'mean Dice':>9} {'median NED':>10} {'s/target':>9}", flush=True)
    best, choices = select_method(templates, candidates, args.weights, progress=lambda c: print(_row(c), flush=True))
    if not made_a_choice(choices):
        # Writing it would pin every later run to a method nobody compared with another.
        why = "one candidate" if len(candidates) == 1 else "only one candidate could run"
        print(f"nothing to choose: {why} ({best.name}); no method written into the templates "
              "(give two or more --backbones or --segmenters to compare)", file=sys.stderr)
        return 0
    print(f"chosen: {best.name}")
    if args.no_write:
        return 0
    for p in paths:
        _write_method(p, best.method)
    print(f"wrote the choice into {len(paths)} template(s); `medshot segment|localize` with them use it "
          "unless --backbone/--segmenter say otherwise")
    return 0


COMMANDS = {"select": cmd_select}
