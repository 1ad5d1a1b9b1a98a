"""Giving freed host memory back to the system between prefill micro-batches.

glibc's ``malloc`` raises its mmap threshold as large blocks are freed (up to 32 MiB on 64-bit), after which a
micro-batch's activations are carved from the heap instead of mapped; blocks of the next batch's different shapes do not
fit the holes, and the heap keeps growing. Trimming the heap after each micro-batch keeps the peak of a long input near
that of one micro-batch, so the ``max_batch_tokens`` budget, not the input, sets the memory. Measured with the bundled
model (``oprm bench rank-memory``), ``OPRM.rank`` over 200k tokens at ``max_batch_tokens=4096`` peaked +561 MiB above
the RSS before the call with trimming and +1,487 MiB without, against +348 MiB for an input of one micro-batch.

It costs time, as the next batch faults the released pages back in: ``rank`` over 60k tokens took 17.1-17.7 s with it
and 13.1-14.2 s without. ``OPRMConfig.release_memory=False`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_freed_memory"]

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
