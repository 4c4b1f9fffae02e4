"""Annotation files that are not images: label-name tables.

Kept apart from the command line so that the evaluation (and any library caller) can read them
without importing :mod:`medshot.cli`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import MedshotError


def read_label_names(path: str | Path) -> dict[int, str]:
    """Read a ``label,name`` CSV (e.g. ``label_names.csv``) into ``{label: name}``.

    Parameters
    ----------
    path : str or Path
        CSV with an integer ``label`` column and a ``name`` column (0 = background may be listed).

    Returns
    -------
    dict of int to str
        Every row, background included.

    Raises
    ------
    MedshotError
        The file is missing, unreadable or lacks the two columns.
    """
    p = Path(path)
    if not p.exists():
        raise MedshotError("file not found", p)
    try:
        with open(p, newline="") as fh:
            return {int(r["label"]): r["name"] for r in csv.DictReader(fh)}
    except (KeyError, ValueError, TypeError) as exc:
        raise MedshotError("label names CSV needs integer 'label' and a 'name' column", p) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedshotError(f"cannot read CSV ({exc})", p) from exc
