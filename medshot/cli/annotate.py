"""``medshot annotate``: the napari plugin's panels (:mod:`medshot.napari.annotate`; napari is imported only to run)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..napari.annotate import add_annotate_parser  # no napari import: the base install lists it too

    add_annotate_parser(sub)


def cmd_annotate(args: argparse.Namespace) -> int:
    from ..napari.annotate import annotate

    return annotate(args.image, args.template, args.targets, args.out, args.screenshot)


COMMANDS = {"annotate": cmd_annotate}
