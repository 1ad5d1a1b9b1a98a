"""Backend for models whose recurrent state is a transformers ``DynamicCache``: Mamba-2, Mamba, FalconMamba and the hybrids.

The families differ in three measured ways (see ``shared/RECURRENT_CACHES.md``), each one flag here:

- ``token_by_token``: Mamba-1 mixers ignore the stored SSM state when a multi-token block continues a cache (silently wrong
  logits), so continuations are fed one token at a time.
- ``attention``: hybrids keep keys/values of every consumed position, padded ones included; they need the full attention
  mask and explicit ``position_ids`` on every cached step. Pure recurrent models get the mask at prefill only (Mamba-1
  corrupts its output when a full-length mask comes with a cached step).
- ``positions``: whether the forward accepts ``position_ids`` (Bamba ignores the cache offset for RoPE without them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from overflow_core.backends import ssd
from overflow_core.backends._compat import (
    cache_from_output,
    cache_to_tensors,
    forward_accepts,
    is_kv,
    is_sliding_kv,
    tensors_to_cache,
)
from overflow_core.backends.base import State

__all__ = ["DynamicCacheBackend", "DynamicCacheSession"]


def _positions_from_mask(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids ``[B, T]`` for a left-padded ``mask [B, T]``: 0, 1, ... over real tokens, counted from ``offset [B]``."""
    pos = mask.long().cumsum(-1) - 1
    if offset is not None:
        pos = pos + offset[:, None]
    return pos.clamp_min(0)


class DynamicCacheBackend:
    """See the module docstring. ``model`` is a Hugging Face causal LM; it is only read, never modified."""

    def __init__(self, model: Any, *, name: str, token_by_token: bool = False, attention: bool = False) -> None:
        self.model = model
        self.name = name
        self.token_by_token = token_by_token
        self.attention = attention
        self.positions = forward_accepts(model, "position_ids")
        self.logits_to_keep = forward_accepts(model, "logits_to_keep")
        self.fast_scan = ssd.install(model)  # Mamba-2 mixers run the library's SSD scan inside this backend's calls

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={type(self.model).__name__})"

    # -- forward --------------------------------------------------------------------------------------------------------
    def _forward(
        self,
        ids: torch.Tensor,
        *,
        cache: Any,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        all_logits: bool,
    ) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
        if cache is not None:
            kwargs["cache"] = cache
        if mask is not None:
            kwargs["attention_mask"] = mask
        if positions is not None and self.positions:
            kwargs["position_ids"] = positions
        if not all_logits and self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with ssd.fast_scan(self.fast_scan):
            out = self.model(**kwargs)
        logits = out.logits if all_logits else out.logits[:, -1]
        return logits, cache_from_output(out)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        mask = mask.to(ids.device)
        logits, cache = self._forward(
            ids, cache=None, mask=mask, positions=_positions_from_mask(mask), all_logits=False
        )
        state = State(
            tensors=self._to_tensors(cache),
            lengths=mask.sum(-1).long().cpu(),
            mask=mask.clone() if self.attention else None,
            backend=self.name,
        )
        return logits, state

    def _to_tensors(self, cache: Any) -> dict[str, torch.Tensor]:
        """The state tensors of a cache the forward returned (see :func:`~overflow_core.backends._compat.cache_to_tensors`)."""
        return cache_to_tensors(cache)

    def _to_cache(self, tensors: dict[str, torch.Tensor], consumed: int) -> Any:
        """A live cache holding ``tensors`` (used as they are) after ``consumed`` positions, padding included."""
        return tensors_to_cache(self.model.config, tensors, consumed)

    # -- rows -----------------------------------------------------------------------------------------------------------
    def select(self, state: State, rows: Sequence[int]) -> State:
        self._check(state)
        index = torch.as_tensor(list(rows), dtype=torch.long)
        tensors = {k: t.index_select(0, index.to(t.device)) for k, t in state.tensors.items()}
        mask = None
        if state.mask is not None:
            mask = state.mask.index_select(0, index.to(state.mask.device))
            keep = int(mask.sum(0).nonzero().min()) if mask.any() else mask.shape[1]
            if keep > 0:  # drop leading columns that are padding in every selected row
                mask = mask[:, keep:].clone()
                tensors = {k: (_drop_front(k, t, mask.shape[1]) if is_kv(k) else t) for k, t in tensors.items()}
        return State(tensors=tensors, lengths=state.lengths[index].clone(), mask=mask, backend=self.name)

    def stack(self, states: Sequence[State]) -> State:
        if not states:
            raise ValueError("stack: expected at least one state, got none")
        for s in states:
            self._check(s)
        mask = None
        if self.attention:
            width = max(s.mask.shape[1] if s.mask is not None else 0 for s in states)
            masks = [
                torch.nn.functional.pad(s.mask, (width - s.mask.shape[1], 0)) for s in states if s.mask is not None
            ]
            mask = torch.cat(masks, 0)
        tensors: dict[str, torch.Tensor] = {}
        for key in states[0].tensors:
            parts = [s.tensors[key] for s in states]
            if is_kv(key):  # sliding layers too: the longest holds min(width, window - 1), what the stack needs
                width = max(p.shape[2] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, 0, width - p.shape[2], 0)) for p in parts]
            tensors[key] = torch.cat(parts, 0)
        lengths = torch.cat([s.lengths for s in states])
        return State(tensors=tensors, lengths=lengths, mask=mask, backend=self.name)

    def open(self, state: State, *, copy: bool = True) -> DynamicCacheSession:
        self._check(state)
        return DynamicCacheSession(self, state, copy=copy)

    def _check(self, state: State) -> None:
        if state.backend != self.name:
            raise ValueError(f"state: expected a state of backend {self.name!r}, got one of {state.backend!r}")


def _drop_front(name: str, kv: torch.Tensor, width: int) -> torch.Tensor:
    """``kv [B, heads, T, dim]`` cut to the last positions a state of ``width`` consumed positions holds: all ``width``
    of them for a full-attention layer, at most ``window - 1`` (what it held already) for a sliding-window layer."""
    keep = min(kv.shape[2], width) if is_sliding_kv(name) else width
    return kv[:, :, kv.shape[2] - keep :].clone()


class DynamicCacheSession:
    """A live cache, private to its owner, advanced in place by :meth:`feed`."""

    def __init__(self, backend: DynamicCacheBackend, state: State, *, copy: bool = True) -> None:
        self.backend = backend
        tensors = {k: t.clone() for k, t in state.tensors.items()} if copy else dict(state.tensors)
        self.lengths = state.lengths.clone()
        consumed = (
            state.mask.shape[1] if state.mask is not None else (int(self.lengths.max()) if self.lengths.numel() else 0)
        )
        self.cache = backend._to_cache(tensors, consumed)
        self.mask = state.mask.clone() if state.mask is not None else None

    def feed(self, ids: torch.Tensor, *, all_logits: bool = False) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[0] != self.lengths.shape[0]:
            raise ValueError(f"ids: expected [B={self.lengths.shape[0]}, T], got {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise ValueError("ids: expected at least one token to feed, got T=0")
        step = 1 if self.backend.token_by_token else ids.shape[1]
        outputs = []
        for start in range(0, ids.shape[1], step):
            block = ids[:, start : start + step]
            mask = positions = None
            if self.mask is not None:
                ones = torch.ones(block.shape, dtype=self.mask.dtype, device=self.mask.device)
                self.mask = torch.cat([self.mask, ones], 1)
                mask = self.mask
            if self.backend.attention or self.backend.positions:
                offset = self.lengths.to(ids.device)
                positions = offset[:, None] + torch.arange(block.shape[1], device=ids.device)[None, :]
            logits, self.cache = self.backend._forward(
                block, cache=self.cache, mask=mask, positions=positions, all_logits=all_logits
            )
            self.lengths = self.lengths + block.shape[1]
            outputs.append(logits)
        if all_logits:
            return torch.cat(outputs, 1)
        return outputs[-1]

    def state(self) -> State:
        tensors = {k: t.clone() for k, t in self.backend._to_tensors(self.cache).items()}
        mask = self.mask.clone() if self.mask is not None else None
        return State(tensors=tensors, lengths=self.lengths.clone(), mask=mask, backend=self.backend.name)
