"""Where a batch's targets run: here, in local worker processes, or on a Dask cluster.

:func:`medshot.cli.batch.run_batch` hands each target's ``work(shot, target)`` to one of the executors
below and commits what comes back; an executor yields one :class:`Outcome` per target, in completion
order, and isolates each target (an error, or a worker lost while running it, fails that target alone).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import MedshotError, one_line

Work = Callable[[Any, Path], tuple[dict[str, bytes], list[list]]]
# Read by BLAS/OpenMP and ITK when a spawned worker imports them: each worker gets its share of the cores.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                     "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
# ``--workers auto`` on volumes: a worker per this much available memory (a 512^3 CT peaks near 3.2 GB).
VOLUME_WORKER_BYTES = 4 * 2**30


@dataclass
class Outcome:
    """One target's output files and table rows, or why it failed."""

    target: str
    files: dict[str, bytes] = field(default_factory=dict)
    rows: list[list] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""


def run_target(work: Work, shot: Any, target: str) -> Outcome:
    """Run ``work`` on one target; any error becomes a ``failed`` outcome with a one-line reason."""
    try:
        files, rows = work(shot, Path(target))
    except MedshotError as exc:
        same = exc.path is not None and Path(exc.path) == Path(target)
        return Outcome(target, status="failed", reason=one_line(exc.problem if same else str(exc)))
    except Exception as exc:  # noqa: BLE001 - isolation: one target's failure must not end the batch
        return Outcome(target, status="failed", reason=one_line(f"{type(exc).__name__}: {exc}"))
    full = [[target, *row] for row in rows]  # each row ends with its status and its reason
    status = "low_confidence" if any(r[-2] == "low_confidence" for r in full) else "ok"
    return Outcome(target, files, full, status)


def cores() -> int:
    """The cores this process may run on (its affinity where the system says, e.g. in a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _available_memory() -> int | None:
    """Bytes of physical memory free now, where the system says."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def auto_workers(targets: int, ndim: int) -> int:
    """``--workers auto``: one process per core, no more than targets, and for volumes no more than the
    free memory holds (:data:`VOLUME_WORKER_BYTES` each). Results do not depend on it (a worker's
    result is the serial one's), only the time does."""
    n = min(cores(), max(1, targets))
    if ndim == 3:
        free = _available_memory()
        if free is not None:
            n = min(n, max(1, free // VOLUME_WORKER_BYTES))
    return int(n)


def local_workers(shot: Any, workers: int | str, scheduler: str | None, targets: int) -> LocalWorkers | None:
    """The local processes ``--workers`` asks for over ``targets`` targets (None: here, or on the cluster).

    ``"auto"``: :func:`auto_workers`, and none where the shot cannot be sent to a process (a note on stderr
    says so). A number N: N processes, at most one per target (1: none), and an error where the shot cannot
    be sent. With a ``scheduler``: none, after the same check (the cluster's workers get the shot).
    """
    if scheduler:
        _ship(shot)
        return None
    if workers == "auto":
        count = auto_workers(targets, getattr(shot, "ndim", 2))
        if count > 1:
            try:
                return LocalWorkers(_ship(shot), count)
            except MedshotError as exc:  # nothing was asked for explicitly: run here rather than fail
                print(f"medshot: note: targets run one after another here: {exc}", file=sys.stderr)
        return None
    return LocalWorkers(_ship(shot), min(workers, targets)) if min(workers, targets) > 1 else None


def execute(work: Work, shot: Any, pool: LocalWorkers | None, todo: list[str], client: Any) -> Iterator[Outcome]:
    """One :class:`Outcome` per target of ``todo``, in completion order: on the Dask ``client``, in ``pool``'s
    processes, or here one after another."""
    if client is not None:
        yield from _on_dask(work, shot, todo, client)
    elif pool is not None and len(todo) > 1:
        yield from _in_processes(work, pool, todo)
    else:
        for target in todo:
            yield run_target(work, shot, target)


def _ship(shot: Any) -> bytes:
    try:
        return pickle.dumps(shot, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - whatever the backbone holds that cannot travel
        raise MedshotError(f"this backbone/segmenter cannot be sent to worker processes ({type(exc).__name__}: "
                           f"{one_line(str(exc), 120)}); run without --workers/--scheduler") from exc


_SHOT: Any = None


def _init_worker(shot_bytes: bytes, threads: int) -> None:
    import signal

    global _SHOT
    # Ctrl-C reaches the whole process group; the parent alone decides what happens then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "SimpleITK" in sys.modules:  # else its environment variable, set by the parent, applies on import
        sys.modules["SimpleITK"].ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    _SHOT = pickle.loads(shot_bytes)


def _exit_with_parent(every: float = 0.5) -> None:
    """End this worker soon after the batch process is gone (SIGKILL, out of memory): a worker left running
    would hold the batch's terminal or pipes open and finish targets no one commits."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="medshot-parent-watch", daemon=True).start()


def _worker_run(work: Work, target: str) -> Outcome:
    return run_target(work, _SHOT, target)


class LocalWorkers:
    """``count`` spawned processes, each holding one copy of the shot (``blob``: it pickled), started when
    first needed and kept until :meth:`close`, so that several batches over the same shot (batch mode's
    pass 1, rounds and outputs) start them, import medshot and unpickle the shot once, and what a worker
    caches for one stage (pseudo-templates) serves the next. A batch's ``work`` carries what changed."""

    def __init__(self, blob: bytes, count: int):
        self.blob, self.count = blob, count
        self.threads = max(1, cores() // count)
        self._executor: Any = None
        self._saved: dict | None = None

    @property
    def executor(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._executor is None:
            if self._saved is None:
                self._saved = {v: os.environ.get(v) for v in _THREAD_VARIABLES}
                for v in _THREAD_VARIABLES:  # read by BLAS/OpenMP when a spawned worker imports numpy
                    os.environ.setdefault(v, str(self.threads))
            self._executor = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(self.blob, self.threads))
        return self._executor

    def renew(self) -> None:
        """Drop a broken pool (a process died): the next :attr:`executor` starts new processes."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        """Stop the processes now (running targets too) and restore the thread variables."""
        if self._executor is not None:
            processes = list((getattr(self._executor, "_processes", None) or {}).values())
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            # Running targets would otherwise finish before the interpreter exits; a stopped batch stops now.
            for proc in processes:
                proc.terminate()
        for v, old in (self._saved or {}).items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
        self._saved = None

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_processes(work: Work, pool: LocalWorkers, todo: list[str]) -> Iterator[Outcome]:
    """The targets on ``pool``'s processes, at most one each in flight.

    Keeping the number in flight to the number of processes means that when a process dies (killed, out
    of memory) the targets it may have been running are known: each is then retried alone, and fails
    only if it takes a process down by itself. A batch that stops early (SIGINT, an error) stops the pool.
    """
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    queue, suspects = deque(todo), deque()
    inflight: dict = {}
    finished = False
    try:
        while queue or suspects or inflight:
            if suspects:
                if not inflight:
                    t = suspects.popleft()
                    inflight[pool.executor.submit(_worker_run, work, t)] = (t, True)
            else:
                while queue and len(inflight) < pool.count:
                    t = queue.popleft()
                    inflight[pool.executor.submit(_worker_run, work, t)] = (t, False)
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                t, alone = inflight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken = True
                    if alone:
                        yield Outcome(t, status="failed", reason="its worker process died while processing it "
                                                                  "(killed, or out of memory?)")
                    else:
                        suspects.append(t)
            if broken:
                for fut in list(inflight):  # a broken pool fails every future at once
                    suspects.append(inflight.pop(fut)[0])
                pool.renew()
        finished = True
    finally:
        if not finished:
            pool.close()


def _dask_run(work: Work, shot: Any, target: str) -> Outcome:
    return run_target(work, shot, target)


def connect_dask(address: str) -> Any:
    """A client of the Dask scheduler at ``address``; one-line errors without Dask or without a scheduler."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise MedshotError('--scheduler needs Dask: pip install "medshot[dask]"') from exc
    try:
        return Client(address, timeout="10s")
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address
        raise MedshotError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: "
                           f"{one_line(str(exc), 160)})") from exc


def _on_dask(work: Work, shot: Any, todo: list[str], client: Any) -> Iterator[Outcome]:
    """Targets as tasks on an existing Dask cluster; the shot is sent to every worker once.

    The workers read the targets from the same paths, so they must see this machine's file system
    (a shared file system on a cluster); the outputs come back here and are written by this process.
    A task whose worker is lost is run again elsewhere by Dask; one that keeps losing its workers
    (Dask's ``allowed-failures``) fails alone.
    """
    from distributed import as_completed

    shot_future = client.scatter(shot, broadcast=True, hash=False)
    futures = {client.submit(_dask_run, work, shot_future, t, pure=False): t for t in todo}
    try:
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                yield fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost connection: this target only
                yield Outcome(t, status="failed", reason=one_line(f"the Dask worker running it was lost "
                                                                  f"({type(exc).__name__}: {exc})"))
    finally:
        for fut in futures:
            fut.cancel()
