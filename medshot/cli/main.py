"""The ``medshot`` parser and the dispatch to its commands.

Every command checks all of its inputs before writing anything, writes each output atomically
and, on a problem a user can fix, prints one line naming the file and exits with status 2.
``localize`` and ``segment`` then run as a batch (:mod:`medshot.cli.batch`): a target that fails is
recorded as failed and the batch goes on (exit status 1), and SIGINT keeps finished targets (130).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..core.errors import MedshotError

# Each command module by name, not ``from . import run``: that form imports this package's
# ``__init__`` (which imports this module) and makes an import cycle.
from .annotate import COMMANDS as ANNOTATE
from .annotate import add_parser as add_annotate
from .backbones import COMMANDS as BACKBONES
from .backbones import add_parser as add_backbones
from .check import COMMANDS as CHECK
from .check import add_parser as add_check
from .demo import COMMANDS as DEMO
from .demo import add_parser as add_demo
from .evaluate import COMMANDS as EVALUATE
from .evaluate import add_parser as add_evaluate
from .run import COMMANDS as RUN
from .run import add_parser as add_run
from .select import COMMANDS as SELECT
from .select import add_parser as add_select
from .template import COMMANDS as TEMPLATE
from .template import add_parser as add_template

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Sub-commands in the order of ``medshot --help``: (add the group's parser(s), name -> function).
GROUPS = ((add_template, TEMPLATE), (add_run, RUN), (add_select, SELECT), (add_check, CHECK),
          (add_demo, DEMO),
          (add_backbones, BACKBONES), (add_annotate, ANNOTATE), (add_evaluate, EVALUATE))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medshot", description=(
        "One-shot localization and segmentation of medical images and volumes: annotate one template, "
        "find the same landmarks and structures in new images."))
    parser.add_argument("--version", action="version", version=f"medshot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_group, _ in GROUPS:
        add_group(sub)
    return parser


def commands() -> dict:
    """Sub-command name -> its function ``(args) -> exit status``."""
    table: dict = {}
    for _, group in GROUPS:
        table.update(group)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run ``medshot`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..core.errors import one_line
    from .batch import BatchInterrupted

    try:
        return int(commands()[args.command](args) or 0)
    except MedshotError as exc:
        print(f"medshot: error: {one_line(str(exc), 1000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BatchInterrupted as exc:
        print(f"medshot: interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("medshot: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file system problem no check foresaw: still one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"medshot: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
