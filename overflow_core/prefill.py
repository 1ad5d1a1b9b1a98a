"""Speculative prefill: many prompts through the model in left-padded micro-batches under a token budget.

A micro-batch holds rows of similar length (prompts are sorted by length) and at most ``max_batch_tokens`` tokens
including padding, so memory is bounded whatever the number of chunks. One forward per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from overflow_core.backends.base import Backend, State
from overflow_core.memory import HeapBound, release_freed_memory, resident_bytes

__all__ = ["PrefillBatch", "pad_left", "plan_batches", "prefill"]


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group row indices into micro-batches with ``rows * longest <= max_batch_tokens``.

    Rows are taken longest first; a row longer than the budget on its own gets a batch of its own (it cannot be split
    without changing the state). Within a batch rows keep ascending index order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        width = max(longest, lengths[i])
        if current and width * (len(current) + 1) > max_batch_tokens:
            batches.append(sorted(current))
            current, width = [], lengths[i]
        current.append(i)
        longest = width
    if current:
        batches.append(sorted(current))
    return batches


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of ids -> ``ids [B, T]`` left-padded with ``pad_id`` and ``mask [B, T]`` (1 for real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


@dataclass(frozen=True)
class PrefillBatch:
    """One micro-batch's result: ``rows`` index the prompts given to :func:`prefill`."""

    rows: list[int]
    logits: torch.Tensor  # [b, V] next-token logits after each row's prompt
    state: State  # b rows, in the order of ``rows``
    padded_tokens: int

    def state_now(self) -> State:
        """The batch's state (a callable form of :attr:`state`, for functions that ask for state lazily)."""
        return self.state


def prefill(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    *,
    max_batch_tokens: int,
    pad_id: int,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
    release_memory: bool = True,
) -> Iterator[PrefillBatch]:
    """Run every prompt, one micro-batch at a time, yielding each batch's logits and state.

    The caller keeps what it needs (a few rows' states, or only the scores) and drops the rest, which is what keeps the
    memory of a long input bounded. ``on_batch(real_tokens)`` is called after each batch (for progress bars).
    ``release_memory`` keeps the heap from growing with the number of batches (CPU only): the first batch sets a bound
    on the resident set, and freed activations are given back to the system after a batch only when it is passed (see
    :class:`~overflow_core.memory.HeapBound`).
    """
    cpu = torch.device(device).type == "cpu"
    bound = HeapBound(rss=resident_bytes, release=release_freed_memory) if release_memory and cpu else None
    lengths = [len(p) for p in prompts]
    for rows in plan_batches(lengths, max_batch_tokens):
        ids, mask = pad_left([prompts[i] for i in rows], pad_id)
        with torch.inference_mode():
            logits, state = backend.prefill(ids.to(device), mask.to(device))
        if bound is not None:
            bound.after_batch()
        if on_batch is not None:
            on_batch(int(mask.sum()))
        yield PrefillBatch(rows=rows, logits=logits, state=state, padded_tokens=int(ids.numel()))
