"""A volume's fine stage: every coarse candidate refined on boxes of the target, and the best one kept.

At the coarse spacing small organs blur and the coarse ranking of the candidates often is not the
fine one's, so each coarse candidate is refined on the fine stage and the choice is verified there.
Each candidate sees the target on its own box around where it puts the template's fine box. The
boxes of one target overlap for the most part, and all grids of one volume at one spacing are parts
of one lattice (:func:`~medshot.pipeline.grids.spaced_grid`), so the target is described once, on
one box covering them all, and each candidate's box is cut out of it (issue 20: describing each box
was a fifth of an OpenKBP volume's time). A cut-out equals the separately described box but for
the descriptors' context at its edges and their per-image channel standardisation (the classical
backbone's), which now see the covering box; where the boxes lie so far apart that the covering box
holds more voxels than they do together, each is described on its own, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.image import Image
from ..match.correspond import Correspondence
from .grids import WorkGrid, mapped_box, spaced_grid
from .stage import Prepared, Stage

# Describe the candidates' boxes once, as one covering box (False: each on its own, as before issue 20).
COVERING_BOX = True


def choose_on_fine_stage(shot: Any, image: Image, value_range: tuple[float, float], coarse: Stage,
                         target: Prepared, placed: Correspondence, fine: Stage,
                         fine_spacing: float) -> tuple[Prepared, Correspondence]:
    """The target's fine box and the verified (not deformed) correspondence of the best coarse candidate.

    Parameters
    ----------
    shot : OneShot
        What prepares a target on a grid (``prepare``) and matches it with a stage (``_match``).
    image : Image
        The target volume; ``value_range`` its intensity window.
    coarse, fine : Stage
        The template's coarse and fine stages.
    target : Prepared
        The whole target on the coarse stage's grid.
    placed : Correspondence
        The coarse stage's verified correspondence: every candidate it verified is tried.
    fine_spacing : float
        The fine stage's voxel size (mm).
    """
    boxes: list[tuple[WorkGrid, np.ndarray]] = []
    for candidate in placed.candidates:
        # template fine working -> template index -> (coarse) -> target index
        to_target = target.grid.from_work @ candidate.matrix @ coarse.grid.to_work @ fine.grid.from_work
        lo, hi = mapped_box(to_target, fine.grid.shape, image.shape, pad=2 * fine_spacing / image.spacing)
        grid = spaced_grid(image.spacing, fine_spacing, lo, hi)
        boxes.append((grid, grid.to_work @ to_target))
    covering = _covering(image, [grid for grid, _ in boxes], fine_spacing) if COVERING_BOX else None
    described = None if covering is None else shot.prepare(image, covering, value_range)
    best = None
    for grid, initial in boxes:
        boxed = shot.prepare(image, grid, value_range) if described is None else cut(described, grid)
        corr = shot._match(fine, boxed, initial=initial, deform=False)
        if best is None or corr.score > best[1].score:
            best = (boxed, corr)
    assert best is not None
    return best


def _covering(image: Image, grids: list[WorkGrid], spacing: float) -> WorkGrid | None:
    """One grid of the lattice covering every grid in ``grids``, or None where that does not pay: a single
    box, or boxes so far apart that the covering one holds more voxels than they do together."""
    if len(grids) < 2:
        return None
    first = np.min([g.origin for g in grids], axis=0)
    last = np.max([g.origin + np.array(g.shape) / g.factor for g in grids], axis=0)
    covering = spaced_grid(image.spacing, spacing, first, last)
    if np.prod(covering.shape) > sum(np.prod(g.shape) for g in grids):
        return None
    if any(_offset(covering, g) is None for g in grids):
        return None
    return covering


def _offset(covering: WorkGrid, grid: WorkGrid) -> np.ndarray | None:
    """Where ``grid``'s first voxel lies in ``covering`` (whole voxels), or None if it is not inside it."""
    at = (grid.origin - covering.origin) * covering.factor
    offset = np.round(at).astype(int)
    if not np.allclose(at, offset, atol=1e-6) or not np.allclose(grid.factor, covering.factor):
        return None
    if np.any(offset < 0) or np.any(offset + np.array(grid.shape) > np.array(covering.shape)):
        return None
    return offset


def cut(described: Prepared, grid: WorkGrid) -> Prepared:
    """The part of a described covering box that ``grid`` (a box of the same lattice inside it) covers."""
    offset = _offset(described.grid, grid)
    if offset is None:
        raise ValueError("the grid is not a box of the described grid's lattice inside it")
    box = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, grid.shape))
    return Prepared(described.image, grid, np.ascontiguousarray(described.work[box]), None,
                    np.ascontiguousarray(described.features[(slice(None), *box)]))
