"""xLSTM: the state is an ``xLSTMCache`` (per layer the mLSTM matrix memory ``C``, normaliser ``n`` and stabiliser ``m``)
and the forward takes no attention mask, so prefill runs ragged batches that never feed a pad (see
:mod:`overflow_core.backends.maskless`). The cache's tensors are copied in and out of a fresh ``xLSTMCache`` around
every call; the forward updates them in place, so nothing a caller holds ever changes.
"""

from __future__ import annotations

from typing import Any

import torch

from overflow_core.backends.maskless import MasklessBackend

__all__ = ["XlstmBackend"]


class XlstmBackend(MasklessBackend):
    """See the module docstring."""

    def _cache(self, batch: int, like: torch.Tensor, state: dict[str, torch.Tensor] | None) -> Any:
        from transformers.models.xlstm.modeling_xlstm import xLSTMCache

        cfg = self.model.config
        dtype = next(iter(state.values())).dtype if state else torch.float32
        cache: Any = xLSTMCache(cfg, batch, dtype=dtype, device=str(like.device))
        if state is not None:
            cache.rnn_state = {
                layer: tuple(state[f"{layer}.{j}"].clone() for j in range(len(parts)))
                for layer, parts in cache.rnn_state.items()
            }
        return cache

    def _forward(
        self, ids: torch.Tensor, state: dict[str, torch.Tensor] | None, *, all_logits: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cache = self._cache(ids.shape[0], ids, state)
        out = self.model(input_ids=ids, cache=cache, use_cache=True)
        logits = out.logits if all_logits else out.logits[:, -1]
        tensors = {f"{layer}.{j}": t for layer, parts in cache.rnn_state.items() for j, t in enumerate(parts)}
        return logits, tensors
