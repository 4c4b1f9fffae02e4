"""The one exception type medshot raises for problems a user can fix."""

from __future__ import annotations

from pathlib import Path


class MedshotError(Exception):
    """A user-facing error: one line that names the file (when there is one) and the problem."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class WeightsNotFoundError(MedshotError):
    """A backbone or segmenter needs model weights that are not on this machine."""


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (white space folded), cut to ``limit`` characters: how a failure is reported."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
