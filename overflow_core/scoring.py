"""Scoring: pure functions from next-token logits to confidence, abstention flags and a ranking."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from overflow_core.types import Chunk, ChunkScore

__all__ = ["ABSTAIN_PENALTY", "entropy", "idk_flags", "rank_chunks", "rank_keys", "rank_order", "top_prob"]


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


ABSTAIN_PENALTY = 1000.0  # added to an abstaining row's key: more than any entropy (ln 256k < 13) or probability gap


def rank_keys(
    entropies: torch.Tensor, top_probs: torch.Tensor, idk: torch.Tensor, *, criterion: str, idk_filter: bool
) -> torch.Tensor:
    """Per-row sort key, lower is better: the entropy (``criterion="entropy"``) or minus the top-token probability
    (``"max_prob"``), plus :data:`ABSTAIN_PENALTY` on abstaining rows when ``idk_filter`` is on. A fixed penalty, not
    one relative to the rows at hand, so keys (and the scores made from them) compare across calls."""
    key = entropies.float() if criterion == "entropy" else -top_probs.float()
    if idk_filter:
        key = key + ABSTAIN_PENALTY * idk.float()
    return key


def rank_order(
    entropies: torch.Tensor, top_probs: torch.Tensor, idk: torch.Tensor, *, criterion: str, idk_filter: bool
) -> list[int]:
    """Row indices best first. With ``idk_filter`` abstaining rows come after every answering row.

    ``criterion="entropy"`` ranks by lowest entropy, ``"max_prob"`` by highest top-token probability; ties keep the
    document order (stable sort), so the result is deterministic.
    """
    key = rank_keys(entropies, top_probs, idk, criterion=criterion, idk_filter=idk_filter)
    return [int(i) for i in torch.sort(key, stable=True).indices]


def rank_chunks(
    chunks: Sequence[Chunk],
    entropies: torch.Tensor,
    top_probs: torch.Tensor,
    idk: torch.Tensor,
    *,
    criterion: str,
    idk_filter: bool,
) -> tuple[ChunkScore, ...]:
    """Every chunk's :class:`ChunkScore`, best first; ``score`` is minus the sort key, so it sorts as ``rank``."""
    keys = rank_keys(entropies, top_probs, idk, criterion=criterion, idk_filter=idk_filter)
    order = [int(i) for i in torch.sort(keys, stable=True).indices]
    return tuple(
        ChunkScore(
            chunk=chunks[i],
            rank=r,
            entropy=float(entropies[i]),
            top_prob=float(top_probs[i]),
            idk=bool(idk[i]),
            score=-float(keys[i]),
        )
        for r, i in enumerate(order)
    )

