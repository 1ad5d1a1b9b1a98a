"""Shared machinery of the families whose forward takes no attention mask (RWKV, xLSTM, remote-code list-state models).

Left padding cannot be masked out of such a state: a pad token goes through the recurrence like any other. So prefill
never feeds a pad. It runs a *ragged* batch instead: every row starts at its first token from the model's own initial
state; after ``min(length)`` tokens the rows that are done leave the batch with their state and last logits, the others
continue from their state with the next segment, and so on. The model sees exactly the real tokens (no padding, no
waste) in as many forward calls as the micro-batch has distinct lengths (chunks cut at sentence boundaries vary in
length: 44 distinct lengths among 64 real chunk prompts). Measured with ``python -m overflow_core.bench.ragged_prefill``
(figures in docs/concepts.md): on RWKV's CPU path this is faster than feeding padded batches whole, which would also be
wrong. This needs multi-token continuation from a state to be exact, which the family tests check.

A subclass gives :meth:`MasklessBackend._forward` (``ids [b, t]`` from a state or from scratch -> logits and the new
state as ``{name: tensor}``, batch on dim 0) and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from overflow_core.backends.base import State

__all__ = ["MasklessBackend", "MasklessSession", "ragged_segments"]


def ragged_segments(lengths: Sequence[int]) -> list[tuple[int, int, list[int]]]:
    """``[(start, end, rows)]``: the columns ``[start, end)`` each forward call covers and the rows still running then.

    Rows are right-aligned nowhere: every row starts at column 0 of its own tokens; a row runs in every segment that
    starts before its length. Lengths of 0 never run.

    Example:
        >>> ragged_segments([5, 3, 5])
        [(0, 3, [0, 1, 2]), (3, 5, [0, 2])]
    """
    cuts = sorted({n for n in lengths if n > 0})
    out: list[tuple[int, int, list[int]]] = []
    start = 0
    for end in cuts:
        rows = [i for i, n in enumerate(lengths) if n >= end]
        out.append((start, end, rows))
        start = end
    return out


class MasklessBackend:
    """See the module docstring. ``model`` is only read; subclasses keep nothing on it between calls."""

    name: str
    attention = False  # the state is a fixed set of tensors, whatever the prompt's length

    def __init__(self, model: Any, *, name: str) -> None:
        self.model = model
        self.name = name
        self.calls = 0  # forward calls made (what the ragged prefill's efficiency figures count)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={type(self.model).__name__})"

    # -- what a family provides -----------------------------------------------------------------------------------------
    def _forward(
        self, ids: torch.Tensor, state: dict[str, torch.Tensor] | None, *, all_logits: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Consume ``ids [b, t]`` (no padding) from ``state`` (``None``: the model's initial state) and return logits
        (``[b, V]`` of the last token, ``[b, t, V]`` if ``all_logits``) and the new state. Must not modify ``state``'s
        tensors."""
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        mask = mask.to(ids.device)
        lengths = [int(n) for n in mask.sum(-1)]
        if min(lengths, default=0) < 1:
            raise ValueError("ids: expected every row to hold at least one real token, got an empty row")
        width = ids.shape[1]
        rows = [ids[i, width - n :] for i, n in enumerate(lengths)]  # each row's real tokens, unpadded
        last: list[torch.Tensor | None] = [None] * len(rows)
        final: list[dict[str, torch.Tensor] | None] = [None] * len(rows)
        state: dict[str, torch.Tensor] | None = None
        running: list[int] = list(range(len(rows)))
        for start, end, active in ragged_segments(lengths):
            if state is not None and active != running:  # rows that finished leave the batch
                keep = torch.as_tensor([running.index(i) for i in active], device=ids.device)
                state = {k: t.index_select(0, keep.to(t.device)) for k, t in state.items()}
            block = torch.stack([rows[i][start:end] for i in active])
            logits, state = self._forward(block, state, all_logits=False)
            self.calls += 1
            running = active
            for j, i in enumerate(active):
                if lengths[i] == end:
                    last[i] = logits[j]
                    final[i] = {k: t[j : j + 1].clone() for k, t in state.items()}
        assert all(s is not None for s in final) and all(x is not None for x in last), "every row ends in a segment"
        tensors = {k: torch.cat([s[k] for s in final if s is not None], 0) for k in final[0] or {}}
        logits_out = torch.stack([x for x in last if x is not None])
        return logits_out, State(tensors=tensors, lengths=torch.tensor(lengths), backend=self.name)

    def select(self, state: State, rows: Sequence[int]) -> State:
        self._check(state)
        index = torch.as_tensor(list(rows), dtype=torch.long)
        tensors = {k: t.index_select(0, index.to(t.device)) for k, t in state.tensors.items()}
        return State(tensors=tensors, lengths=state.lengths[index].clone(), backend=self.name)

    def stack(self, states: Sequence[State]) -> State:
        if not states:
            raise ValueError("stack: expected at least one state, got none")
        for s in states:
            self._check(s)
        tensors = {k: torch.cat([s.tensors[k] for s in states], 0) for k in states[0].tensors}
        return State(tensors=tensors, lengths=torch.cat([s.lengths for s in states]), backend=self.name)

    def open(self, state: State, *, copy: bool = True) -> MasklessSession:
        self._check(state)
        return MasklessSession(self, state, copy=copy)

    def _check(self, state: State) -> None:
        if state.backend != self.name:
            raise ValueError(f"state: expected a state of backend {self.name!r}, got one of {state.backend!r}")


class MasklessSession:
    """A private copy of a state, advanced in place by :meth:`feed`."""

    def __init__(self, backend: MasklessBackend, state: State, *, copy: bool = True) -> None:
        self.backend = backend
        self.tensors = {k: t.clone() for k, t in state.tensors.items()} if copy else dict(state.tensors)
        self.lengths = state.lengths.clone()

    def feed(self, ids: torch.Tensor, *, all_logits: bool = False) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[0] != self.lengths.shape[0]:
            raise ValueError(f"ids: expected [B={self.lengths.shape[0]}, T], got {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise ValueError("ids: expected at least one token to feed, got T=0")
        logits, self.tensors = self.backend._forward(ids, self.tensors, all_logits=all_logits)
        self.lengths = self.lengths + ids.shape[1]
        return logits

    def state(self) -> State:
        tensors = {k: t.clone() for k, t in self.tensors.items()}
        return State(tensors=tensors, lengths=self.lengths.clone(), backend=self.backend.name)
