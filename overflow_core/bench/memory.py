"""Resident memory (RSS) measurement: the current value, the process high-water mark, and a sampler for one block.

How it is measured:

- ``current_rss()`` reads ``/proc/self/statm`` (resident pages x page size): the memory the process holds right now.
- ``max_rss()`` is ``getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's exact high-water mark of the whole process life.
- :class:`PeakRss` returns freed heap to the system first (``malloc_trim(0)`` on glibc, so the baseline is not inflated
  by memory the allocator kept from an earlier call), reads the baseline, then samples ``current_rss()`` from a thread every
  ``interval_s`` while the block runs (torch kernels release the GIL, so the sampler runs during them). The peak is the
  largest sample, raised to ``ru_maxrss`` when the block set a new process high-water mark: then that exact value is the
  block's peak. A spike shorter than the interval that does not beat the process high-water mark can be missed.

For a clean per-phase peak, run the phase in a fresh process (as the scaling benchmarks do) so that ``ru_maxrss`` rises
during the phase.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from types import TracebackType

from overflow_core.memory import release_freed_memory

__all__ = ["PeakRss", "current_rss", "max_rss", "trim"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def max_rss() -> int:
    """The process's peak RSS so far, in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss() -> int:
    """The process's RSS now, in bytes; the high-water mark where ``/proc`` is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return max_rss()


def trim() -> bool:
    """Give freed heap memory back to the system (glibc ``malloc_trim(0)``); False where that is not available."""
    return release_freed_memory()


class PeakRss:
    """``with PeakRss() as m: ...`` then ``m.before``, ``m.peak``, ``m.after``, ``m.delta`` (bytes).

    Example:
        >>> with PeakRss() as m:
        ...     buf = bytearray(50 * 2**20)
        >>> m.delta >= 50 * 2**20  # doctest: +SKIP
        True
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.before = self.peak = self.after = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_before = 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss())
            self.samples += 1

    def __enter__(self) -> PeakRss:
        trim()
        self.before = self.peak = current_rss()
        self._max_before = max_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.after = current_rss()
        high = max_rss()
        self.peak = max(self.peak, self.after, high if high > self._max_before else 0)

    @property
    def delta(self) -> int:
        """Peak during the block minus the baseline before it."""
        return self.peak - self.before
