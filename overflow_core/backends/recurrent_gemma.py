"""RecurrentGemma: recurrent state on the modules, attention keys/values in a cache the model builds for itself.

transformers' RecurrentGemma keeps each recurrent block's conv state (``temporal_block.conv1d_state``) and RG-LRU state
(``temporal_block.rg_lru.recurrent_states``) as module attributes, and builds its sliding-window KV cache inside the
forward unless one is passed. Here the state stays a value:

- every forward gets a ``DynamicCache`` made by the backend (so the keys/values come back), and the module states are
  written onto the modules right before the call and read back (then cleared) right after it, under a lock held per
  model, so concurrent calls from several threads give exactly what serial calls give and no call leaves anything on
  the model;
- left padding: the RG-LRU resets where ``position_ids == 0`` (every pad and each row's first token), which drops what
  pads put in it; the short convolution before it would still see the pads, so during prefill the conv input is zeroed
  at pad positions (a forward hook on ``linear_x``, removed in the same locked call), which is exactly the zero padding
  a fresh sequence gets;
- continuation is fed one token at a time: a multi-token block from a stored state takes the model's prefill path,
  which ignores the stored conv state (measured by the family tests).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from overflow_core.backends._compat import cache_to_tensors, tensors_to_cache
from overflow_core.backends.dynamic import DynamicCacheBackend

__all__ = ["RecurrentGemmaBackend"]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: Any) -> threading.Lock:
    """One lock per model object, shared by every backend (and engine) over it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


@dataclass
class _Cache:
    """What a RecurrentGemma call reads and writes: the attention cache and the recurrent blocks' module states."""

    kv: Any
    recurrent: dict[str, torch.Tensor] = field(default_factory=dict)  # "<layer>.rgconv" / "<layer>.rglru"


class RecurrentGemmaBackend(DynamicCacheBackend):
    """See the module docstring. ``model`` is a ``RecurrentGemmaForCausalLM``; nothing is left on it after a call."""

    def __init__(self, model: Any, *, name: str) -> None:
        super().__init__(model, name=name, token_by_token=True, attention=True)
        self._lock = _model_lock(model)
        base = getattr(model, "model", model)
        self._blocks = {
            i: layer.temporal_block for i, layer in enumerate(base.layers) if hasattr(layer.temporal_block, "rg_lru")
        }

    def _fresh(self, batch: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.model.config
        dtype = next(self.model.parameters()).dtype
        out: dict[str, torch.Tensor] = {}
        for i in self._blocks:
            out[f"{i}.rgconv"] = torch.zeros(
                (batch, cfg.lru_width, cfg.conv1d_width - 1), dtype=dtype, device=like.device
            )
            out[f"{i}.rglru"] = torch.zeros((batch, cfg.lru_width), dtype=torch.float32, device=like.device)
        return out

    @contextmanager
    def _on_modules(self, cache: _Cache, pad_mask: torch.Tensor | None) -> Iterator[None]:
        """Hold the model: put ``cache.recurrent`` on the modules, run, read the new states back, clear the modules."""
        with self._lock:
            hooks = []
            try:
                for i, block in self._blocks.items():
                    block.conv1d_state = cache.recurrent[f"{i}.rgconv"]
                    block.rg_lru.recurrent_states = cache.recurrent[f"{i}.rglru"]
                    if pad_mask is not None:
                        keep = pad_mask[:, :, None]
                        hooks.append(
                            block.linear_x.register_forward_hook(
                                lambda _m, _i, out, keep=keep: out * keep.to(out.dtype)
                            )
                        )
                yield
                for i, block in self._blocks.items():
                    cache.recurrent[f"{i}.rgconv"] = block.conv1d_state
                    cache.recurrent[f"{i}.rglru"] = block.rg_lru.recurrent_states
            finally:
                for hook in hooks:
                    hook.remove()
                for block in self._blocks.values():
                    block.conv1d_state = None
                    block.rg_lru.recurrent_states = None

    def _forward(
        self,
        ids: torch.Tensor,
        *,
        cache: Any,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        all_logits: bool,
    ) -> tuple[torch.Tensor, Any]:
        from transformers import DynamicCache

        prefill = cache is None
        if prefill:
            cache = _Cache(DynamicCache(config=self.model.config), self._fresh(ids.shape[0], ids))
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True, "cache": cache.kv}
        if mask is not None:
            kwargs["attention_mask"] = mask
        if positions is not None:
            kwargs["position_ids"] = positions
        if not all_logits:
            kwargs["logits_to_keep"] = 1
        pad_mask = mask if prefill and mask is not None and not bool(mask.all()) else None
        with self._on_modules(cache, pad_mask):
            out = self.model(**kwargs)
        logits = out.logits if all_logits else out.logits[:, -1]
        return logits, cache

    def _to_tensors(self, cache: Any) -> dict[str, torch.Tensor]:
        return {**cache_to_tensors(cache.kv), **cache.recurrent}

    def _to_cache(self, tensors: dict[str, torch.Tensor], consumed: int) -> Any:
        recurrent = {k: t for k, t in tensors.items() if k.endswith((".rgconv", ".rglru"))}
        kv = tensors_to_cache(self.model.config, {k: t for k, t in tensors.items() if k not in recurrent}, consumed)
        return _Cache(kv, recurrent)
