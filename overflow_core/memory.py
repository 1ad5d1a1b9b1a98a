"""Giving freed host memory back to the system between prefill micro-batches.

glibc's ``malloc`` raises its mmap threshold as large blocks are freed (up to 32 MiB on 64-bit), after which a
micro-batch's activations are carved from the heap instead of mapped; blocks of the next batch's different shapes do not
fit the holes, and the heap keeps growing. Trimming the heap after each micro-batch keeps the peak of a long input near
that of one micro-batch, so the ``max_batch_tokens`` budget, not the input, sets the memory. Measured with the bundled
model (``oprm bench rank-memory``), ``OPRM.rank`` over 200k tokens at ``max_batch_tokens=4096`` peaked +561 MiB above
the RSS before the call with trimming and +1,487 MiB without, against +348 MiB for an input of one micro-batch.

Trimming after every batch costs time, as the next batch faults the released pages back in: ``rank`` over 60k tokens
took 17.1-17.7 s with it and 13.1-14.2 s without. So :class:`HeapBound` trims only when it is needed: the first
micro-batch sets a bound on the resident set (the size before the call plus ``factor`` times what that batch added, and
at least ``min_slack_bytes``), and the heap is trimmed after a batch only when the resident set has grown past it. Batches
that reuse the heap's free blocks, the usual case, cost nothing extra; a heap that fragments is trimmed back under the
bound. ``OPRMConfig.release_memory=False`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

__all__ = ["HeapBound", "release_freed_memory", "resident_bytes"]

_LIBC: ctypes.CDLL | bool | None = False  # False: not looked up yet; None: no malloc_trim here


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is False:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
        except OSError:
            lib = None
        _LIBC = lib if lib is not None and hasattr(lib, "malloc_trim") else None
    return _LIBC  # type: ignore[return-value]


def release_freed_memory() -> bool:
    """Return freed heap pages to the system (glibc ``malloc_trim(0)``). False where that is not available
    (musl, macOS, Windows): there it is a no-op."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


def resident_bytes() -> int | None:
    """The process's resident set size in bytes (``/proc/self/statm``), or None where that cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapBound:
    """Keeps the resident set of a loop of micro-batches under a bound set by its first batch, trimming only past it.

    Call :meth:`after_batch` after each micro-batch (its activations freed). Where the resident set cannot be read, it
    trims after every batch, as before.

    Args:
        factor: the bound is the size before the loop plus ``factor`` times what the first batch added.
        min_slack_bytes: the bound is at least this far above the size before the loop.
        rss: reads the resident set size (tests pass a fake).
        release: gives freed heap memory back (tests pass a fake).
    """

    def __init__(
        self,
        *,
        factor: float = 2.0,
        min_slack_bytes: int = 256 * 2**20,
        rss: Callable[[], int | None] = resident_bytes,
        release: Callable[[], bool] = release_freed_memory,
    ) -> None:
        self.factor, self.min_slack, self._rss, self._release = factor, min_slack_bytes, rss, release
        self.base = rss()
        self.limit: int | None = None
        self.trims = 0

    def after_batch(self) -> bool:
        """Trim the heap if the resident set is past the bound; returns whether it trimmed."""
        now = self._rss()
        if now is None or self.base is None:
            self._release()
            self.trims += 1
            return True
        if self.limit is None:
            self.limit = self.base + max(int(self.factor * max(now - self.base, 0)), self.min_slack)
        if now <= self.limit:
            return False
        self._release()
        self.trims += 1
        return True
