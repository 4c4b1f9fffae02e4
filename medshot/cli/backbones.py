"""``medshot backbones``: every backbone and segmenter, and whether each can run here."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    sub.add_parser("backbones", help="list backbones and segmenters and whether each can run here")


def cmd_backbones(args: argparse.Namespace) -> int:
    from ..features import backbone_entries
    from ..segment import segmenter_names, segmenter_status

    print(f"{'backbone':<22} {'family':<14} {'ready':<6} detail")
    for e in backbone_entries():
        ok, why = e.available()
        print(f"{e.name:<22} {e.family:<14} {'yes' if ok else 'no':<6} {why}")
    print()
    print(f"{'segmenter':<22} {'ready':<6} detail")
    for name in segmenter_names():
        ok, why = segmenter_status(name)
        print(f"{name:<22} {'yes' if ok else 'no':<6} {why}")
    return 0


COMMANDS = {"backbones": cmd_backbones}
