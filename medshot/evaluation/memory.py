"""Peak memory of one evaluated case (:class:`MemoryProbe`)."""

from __future__ import annotations

import re
import tracemalloc


class MemoryProbe:
    """Peak memory of one case, in MB.

    ``rss`` (Linux): the peak resident set size during the case minus the resident size before it,
    read from ``/proc/self/status`` after handing freed heap memory back to the system (glibc
    ``malloc_trim``) and resetting the peak through ``/proc/self/clear_refs``; it counts everything
    the process touches (numpy, torch, SimpleITK). Elsewhere ``tracemalloc``: the peak of
    Python-traced allocations (numpy arrays included, native libraries not).

    Use ``start()`` before and ``stop()`` after a case; ``stop`` returns the peak in MB.
    """

    def __init__(self) -> None:
        self.kind = "rss" if self._reset_rss() else "tracemalloc"
        self._start = 0.0
        self._trim = _malloc_trim()

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return _proc_status_kb("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        """Reset the peak and remember the current use."""
        if self.kind == "rss":
            if self._trim is not None:
                self._trim(0)  # freed memory would otherwise stay resident and hide the next case's peak
            self._reset_rss()
            self._start = float(_proc_status_kb("VmRSS") or 0)
        else:
            if not tracemalloc.is_tracing():
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._start = float(tracemalloc.get_traced_memory()[0]) / 1024

    def stop(self) -> float:
        """Peak use since :meth:`start` above the use then, in MB."""
        if self.kind == "rss":
            peak = float(_proc_status_kb("VmHWM") or 0)
        else:
            peak = float(tracemalloc.get_traced_memory()[1]) / 1024
        return max(0.0, peak - self._start) / 1024


def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            m = re.search(rf"^{key}:\s+(\d+)", fh.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None
