"""The backend protocol: what the engine needs from a recurrent model, and the :class:`State` value it passes around.

A backend can (1) prefill a left-padded batch and return each row's last logits and state, (2) select, clone and stack
rows of state, and (3) open a :class:`Session` on a state: a private, live copy that is advanced in place by feeding more
tokens (the decode loop and index queries use it). A :class:`State` is a value: no backend method mutates a state it was
given, and nothing is stored on the model between calls, so one model serves concurrent requests.

Families whose state is not a transformers ``DynamicCache`` (RecurrentGemma keeps it on its modules, RWKV returns a list of
tensors) implement the same protocol with their own ``State.tensors`` layout; the engine does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Backend", "Session", "State"]


@dataclass(frozen=True)
class State:
    """Recurrent state of ``B`` rows after each consumed its prompt.

    Attributes:
        tensors: named state tensors, the batch on dim 0 of each (layout is the backend's business).
        lengths: ``[B]`` real (non-pad) tokens consumed per row; the next position id of each row.
        mask: ``[B, T]`` attention mask over every consumed position, kept only by backends with attention layers
            (their key/value tensors keep padded positions); ``None`` for pure recurrent models.
        backend: name of the backend that made it; states of different backends never mix.
    """

    tensors: dict[str, torch.Tensor]
    lengths: torch.Tensor
    mask: torch.Tensor | None = None
    backend: str = ""

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors (what a cache or an index pays per entry)."""
        total = sum(t.numel() * t.element_size() for t in self.tensors.values())
        total += self.lengths.numel() * self.lengths.element_size()
        if self.mask is not None:
            total += self.mask.numel() * self.mask.element_size()
        return total

    def __repr__(self) -> str:
        return (
            f"State(backend={self.backend!r}, rows={self.batch_size}, tensors={len(self.tensors)}, bytes={self.nbytes})"
        )


@runtime_checkable
class Session(Protocol):
    """A live, private copy of a state, advanced in place by :meth:`feed`."""

    def feed(self, ids: torch.Tensor, *, all_logits: bool = False) -> torch.Tensor:
        """Consume ``ids [B, T]`` (no padding) and return logits ``[B, V]`` of the last token (``[B, T, V]`` if
        ``all_logits``)."""
        ...

    def state(self) -> State:
        """A snapshot of the session's current state (a copy: feeding more does not change it)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """One architecture family. See the module docstring."""

    name: str

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Run ``ids [B, T]`` (left-padded, ``mask [B, T]`` 1 for real tokens) and return last logits ``[B, V]`` and the
        state of every row."""
        ...

    def select(self, state: State, rows: Sequence[int]) -> State:
        """A new state with only ``rows`` (in that order), sharing no storage with ``state``."""
        ...

    def stack(self, states: Sequence[State]) -> State:
        """One state whose rows are the rows of ``states`` in order."""
        ...

    def open(self, state: State, *, copy: bool = True) -> Session:
        """A session that starts from a private copy of ``state``; ``copy=False`` hands the session the state's own
        tensors instead (the caller gives the state up: it made it for this session and never reads it again)."""
        ...
