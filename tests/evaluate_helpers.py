"""Helpers shared by the ``medshot evaluate`` tests (images and volumes)."""

from __future__ import annotations

from pathlib import Path


def case_blocks(path: Path) -> list[list[str]]:
    """The lines of a ``cases.csv`` (header left out) grouped by case: template, target and method in turn."""
    blocks: list[list[str]] = []
    for line in path.read_text().splitlines(keepends=True)[1:]:
        if not blocks or blocks[-1][0].split(",")[:3] != line.split(",")[:3]:
            blocks.append([])
        blocks[-1].append(line)
    return blocks
