"""RWKV, and every remote-code family whose state is a list of tensors (RWKV-5/6 ``trust_remote_code`` checkpoints).

transformers' ``rwkv`` (v4) takes ``state=[5 tensors [B, hidden, layers]]`` and returns ``out.state``; the forward
updates the tensors it was given in place and ignores the attention mask. So the state is cloned before every call
(nothing a caller holds changes) and prefill never feeds a pad (ragged batches, see
:mod:`overflow_core.backends.maskless`). Any model with that interface (``forward(input_ids, state=list, use_cache=True)
-> .logits, .state``, batch on dim 0 of every state tensor) runs here.
"""

from __future__ import annotations

from typing import Any

import torch

from overflow_core.backends._compat import forward_accepts, single_token_batch_broken
from overflow_core.backends.maskless import MasklessBackend

__all__ = ["RwkvBackend"]


class RwkvBackend(MasklessBackend):
    """See the module docstring."""

    def __init__(self, model: Any, *, name: str) -> None:
        super().__init__(model, name=name)
        self.logits_to_keep = forward_accepts(model, "logits_to_keep")
        self.row_by_row = single_token_batch_broken(model)
        # transformers' RWKV rescales its weights in place on its first forward in eval mode; do it now, once, so
        # that concurrent first calls cannot race on it.
        base = getattr(model, "rwkv", None)
        if base is not None and getattr(base, "layers_are_rescaled", True) is False and not model.training:
            with torch.inference_mode():
                model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device), use_cache=False)

    def _forward(
        self, ids: torch.Tensor, state: dict[str, torch.Tensor] | None, *, all_logits: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.row_by_row and state is not None and ids.shape[0] > 1 and ids.shape[1] == 1:
            parts = [
                self._forward(ids[i : i + 1], {k: t[i : i + 1] for k, t in state.items()}, all_logits=all_logits)
                for i in range(ids.shape[0])
            ]
            return torch.cat([p[0] for p in parts]), {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
        if state is not None:
            kwargs["state"] = [state[f"s{j}"].clone() for j in range(len(state))]  # the forward writes into them
        if not all_logits and self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        new = getattr(out, "state", None)
        if not isinstance(new, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in new):
            raise TypeError(
                f"{type(self.model).__name__}: expected the output to carry .state as a list of tensors, got "
                f"{type(new).__name__}; was use_cache=True honoured?"
            )
        logits = out.logits if all_logits else out.logits[:, -1]
        return logits, {f"s{j}": t for j, t in enumerate(new)}
