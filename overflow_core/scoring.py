"""Scoring: pure functions from next-token logits to confidence, abstention flags and a ranking."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["entropy", "idk_flags", "rank_order", "top_prob"]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row: ``[B, V] -> [B]``, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def top_prob(logits: torch.Tensor) -> torch.Tensor:
    """Probability of the most likely token per row: ``[B, V] -> [B]``."""
    return torch.softmax(logits.float(), dim=-1).max(-1).values


def idk_flags(logits: torch.Tensor, idk_ids: Iterable[int]) -> torch.Tensor:
    """``[B, V] -> [B]`` bool: the row's most likely token starts the not-found answer."""
    ids = torch.as_tensor(sorted(set(idk_ids)), dtype=torch.long, device=logits.device)
    return torch.isin(logits.argmax(-1), ids)


def rank_order(
    entropies: torch.Tensor, top_probs: torch.Tensor, idk: torch.Tensor, *, criterion: str, idk_filter: bool
) -> list[int]:
    """Row indices best first. With ``idk_filter`` abstaining rows come after every answering row.

    ``criterion="entropy"`` ranks by lowest entropy, ``"max_prob"`` by highest top-token probability; ties keep the
    document order (stable sort), so the result is deterministic.
    """
    key = entropies.float() if criterion == "entropy" else -top_probs.float()
    if idk_filter:
        key = torch.where(idk, key + (key.max() - key.min() + 1), key)  # abstainers last, still ordered among themselves
    return [int(i) for i in torch.sort(key, stable=True).indices]
