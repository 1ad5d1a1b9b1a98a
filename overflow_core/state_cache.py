"""A bounded, thread-safe cache of single-row states keyed by the token ids that produced them.

When the engine ranks chunks for a question it keeps the states of the best chunks here, keyed by their full prompt ids.
Anything that later asks the same engine to continue a prompt starting with those ids (a chat model in a RAG chain, a
second call with the same question) finds the longest cached prefix and feeds only the remaining tokens. No side channel
between classes: just "have these exact tokens been run already?".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from overflow_core.backends.base import State

__all__ = ["CachedState", "StateCache"]


@dataclass(frozen=True)
class CachedState:
    ids: tuple[int, ...]
    state: State  # one row, after consuming ``ids``
    logits: torch.Tensor  # [1, V] next-token logits after ``ids``

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.logits.numel() * self.logits.element_size()


class StateCache:
    """LRU over :class:`CachedState` entries, at most ``max_bytes`` in all (0 disables the cache)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], CachedState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, ids: Sequence[int], state: State, logits: torch.Tensor) -> None:
        entry = CachedState(tuple(ids), state, logits.detach())
        if self.max_bytes <= 0 or entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(entry.ids, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[entry.ids] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def longest_prefix(self, ids: Sequence[int]) -> CachedState | None:
        """The cached entry whose ids are the longest prefix of ``ids`` (or equal to it), or None."""
        key = tuple(ids)
        with self._lock:
            best: CachedState | None = None
            for entry in self._entries.values():
                n = len(entry.ids)
                if n <= len(key) and (best is None or n > len(best.ids)) and key[:n] == entry.ids:
                    best = entry
            if best is None:
                self.misses += 1
                return None
            self._entries.move_to_end(best.ids)
            self.hits += 1
            return best

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
