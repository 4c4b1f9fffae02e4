"""One batch loop for every ``localize`` / ``segment`` command, 2D and volumes.

The loop takes a prepared *shot* (the template with its features, computed once) and a *work*
function ``work(shot, target) -> (files, rows)`` that makes one target's output files (as bytes)
and table rows. It runs the targets here, in ``--workers N`` local processes, or on a Dask cluster
(``--scheduler ADDRESS``), and in every case **this process commits each target's outputs as its
result arrives**: files, then the merged table, then the run record, each atomically. So a target
that is finished is on disk whatever happens later, a lost worker costs at most the targets it was
running, and the output is the same whichever way the targets ran.

Each target is isolated: an error while processing it becomes a ``failed`` row with the one-line
reason, and the batch goes on. See the README ("Batches") for statuses and exit codes.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .outdir import OutputFolder, settings_key
from .workers import LocalWorkers, Work, connect_dask, execute, local_workers

STATUSES = ("ok", "low_confidence", "failed")


class BatchInterrupted(KeyboardInterrupt):
    """SIGINT during a batch, after the finished targets were committed; the message says what was kept."""


@dataclass
class BatchSpec:
    """What one command writes.

    Attributes
    ----------
    command : str
        ``"segment"`` or ``"localize"``.
    table : str
        Table file name in ``--out``.
    header : list of str
        Its columns: ``target`` first, ``status`` and ``reason`` last.
    work : callable
        Module-level (picklable) ``work(shot, target_path) -> (files, rows)``; ``files`` maps output
        names to their bytes, each row holds every column but ``target`` and ``reason`` (its status,
        from :func:`medshot.pipeline.score_status`, last).
    unit : str
        ``"image"`` or ``"volume"``, for the progress bar.
    """

    command: str
    table: str
    header: list[str]
    work: Work
    unit: str = "image"


def run_batch(spec: BatchSpec, shot: Any, targets: list[Path], out: str | Path, settings: dict, *,
              resume: bool = False, workers: int | str | LocalWorkers = 1, scheduler: str | None = None,
              quiet: bool = False) -> int:
    """Process ``targets`` into ``out``; return the exit status (0, or 1 when a target failed).

    Parameters
    ----------
    settings : dict
        Everything that decides a target's result (template hash, backbone, options, version):
        ``--resume`` skips a target only when it was done with equal settings.
    workers : int, "auto" or LocalWorkers
        Local processes (:func:`local_workers`), or processes already started for several batches over
        the same shot (batch mode's stages), which this call leaves running. Ignored with ``scheduler``.

    Raises
    ------
    MedshotError
        Before any target ran: the folder cannot be written, is locked, or holds another kind of table.
    BatchInterrupted
        On SIGINT, after every finished target was committed.
    """
    key = settings_key(settings)
    names = {str(t.resolve()): t for t in targets}
    # Problems with the workers are found before the output folder is touched.
    own = not isinstance(workers, LocalWorkers)
    pool = local_workers(shot, workers, scheduler, len(targets)) if own else workers
    client = connect_dask(scheduler) if scheduler else None
    try:
        with OutputFolder(out, spec.command, spec.table, spec.header) as folder:
            return _loop(spec, shot, pool, client, names, folder, key, settings, resume, quiet)
    finally:
        if client is not None:
            client.close()
        if own and pool is not None:
            pool.close()


def _loop(spec: BatchSpec, shot: Any, pool: LocalWorkers | None, client: Any, names: dict[str, Path],
          folder: OutputFolder, key: str, settings: dict, resume: bool, quiet: bool) -> int:
    """The batch proper, under the folder's lock: skip what --resume allows, commit each outcome as it comes."""
    from tqdm import tqdm

    out = folder.path
    todo = [k for k, t in names.items() if not (resume and folder.is_done(k, t, key))]
    skipped = len(names) - len(todo)
    folder.plan(list(names))
    counts: Counter = Counter()
    bar = tqdm(total=len(todo), desc=spec.command, unit=spec.unit, file=sys.stderr,
               disable=quiet or len(todo) < 2)
    try:
        for outcome in execute(spec.work, shot, pool, todo, client):
            # A failed target (or one with nothing to report) still gets its row: the table lists every target.
            rows = outcome.rows or [[outcome.target, *[""] * (len(spec.header) - 3), outcome.status, outcome.reason]]
            folder.commit_target(outcome.target, names[outcome.target], outcome.files, rows, outcome.status,
                                 key, settings)
            counts[outcome.status] += 1
            if outcome.status == "failed":
                bar.write(f"medshot: {outcome.target}: failed: {outcome.reason}", file=sys.stderr)
            bar.update()
    except KeyboardInterrupt as exc:
        bar.close()
        done = sum(counts.values())
        raise BatchInterrupted(f"{done} of {len(todo)} targets finished; their outputs are kept in {out} (run "
                               f"again with --resume to do the rest)") from exc
    bar.close()
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES)
    extra = f", {skipped} skipped (done before with the same settings)" if skipped else ""
    print(f"{spec.command}: {len(todo)} targets: {summary}{extra}; table: {Path(out) / spec.table}")
    return 1 if counts["failed"] else 0
