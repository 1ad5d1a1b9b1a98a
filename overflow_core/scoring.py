"""Scoring: pure functions from next-token logits to confidence signals, abstention flags and a ranking."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from overflow_core.types import Chunk, ChunkScore

__all__ = [
    "ABSTAIN_PENALTY",
    "Signals",
    "entropy",
    "idk_flags",
    "not_found_prob",
    "phrase_probability",
    "rank_chunks",
    "rank_keys",
    "rank_order",
    "signals",
    "top_prob",
]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` per row: ``[B, V] -> [B]``, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def top_prob(logits: torch.Tensor) -> torch.Tensor:
    """Probability of the most likely token per row: ``[B, V] -> [B]``."""
    return torch.softmax(logits.float(), dim=-1).max(-1).values


def _ids(idk_ids: Iterable[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(sorted(set(idk_ids)), dtype=torch.long, device=device)


def phrase_probability(
    first: torch.Tensor, sequence: Sequence[int], forced: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability of answering exactly ``sequence`` and whether greedy decoding would write it, per row.

    Args:
        first: ``[B, V]`` next-token logits at the answer position.
        sequence: the phrase's token ids (``k`` of them).
        forced: ``[B, k - 1, V]`` logits after teacher-forcing ``sequence[:-1]`` on each row (``None`` when ``k == 1``).

    Returns:
        ``([B] probability of the whole sequence, [B] bool: every step's most likely token is the sequence's)``.
    """
    steps = [first.float()] + ([forced[:, j].float() for j in range(forced.shape[1])] if forced is not None else [])
    if len(steps) != len(sequence):
        raise ValueError(f"forced: expected logits for {len(sequence) - 1} teacher-forced steps, got {len(steps) - 1}")
    logp = torch.zeros(first.shape[0], device=first.device)
    greedy = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
    for step, token in zip(steps, sequence, strict=True):
        logp = logp + torch.log_softmax(step, -1)[:, int(token)]
        greedy &= step.argmax(-1) == int(token)
    return logp.exp(), greedy


def idk_flags(logits: torch.Tensor, idk_ids: Iterable[int]) -> torch.Tensor:
    """``[B, V] -> [B]`` bool: the row's most likely token starts the not-found answer."""
    return torch.isin(logits.argmax(-1), _ids(idk_ids, logits.device))


def not_found_prob(logits: torch.Tensor, idk_ids: Iterable[int]) -> torch.Tensor:
    """``[B, V] -> [B]``: the probability of starting the not-found answer (summed over its first tokens)."""
    return torch.softmax(logits.float(), dim=-1)[:, _ids(idk_ids, logits.device)].sum(-1)


@dataclass(frozen=True)
class Signals:
    """What the scorer reads from each row's next-token distribution, one ``[n]`` tensor per signal, on the CPU."""

    entropy: torch.Tensor
    top_prob: torch.Tensor
    not_found_prob: torch.Tensor
    idk: torch.Tensor  # bool

    @classmethod
    def zeros(cls, n: int) -> Signals:
        return cls(torch.zeros(n), torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.bool))

    def put(self, rows: Sequence[int] | torch.Tensor, other: Signals) -> None:
        """Write ``other``'s rows into positions ``rows`` (the engine fills one micro-batch at a time)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        for name in ("entropy", "top_prob", "not_found_prob", "idk"):
            getattr(self, name)[index] = getattr(other, name).cpu()

    def take(self, rows: Sequence[int] | torch.Tensor) -> Signals:
        index = torch.as_tensor(rows, dtype=torch.long)
        return Signals(self.entropy[index], self.top_prob[index], self.not_found_prob[index], self.idk[index])


def signals(logits: torch.Tensor, idk_ids: Iterable[int]) -> Signals:
    """Every signal of ``[B, V]`` next-token logits (the not-found answer starts with one of ``idk_ids``): what
    :func:`entropy`, :func:`top_prob`, :func:`not_found_prob` and :func:`idk_flags` give, from one softmax."""
    ids = _ids(idk_ids, logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return Signals(-(p * logp).sum(-1), p.max(-1).values, p[:, ids].sum(-1), torch.isin(logits.argmax(-1), ids))


ABSTAIN_PENALTY = 1000.0  # added to an abstaining row's key: more than any entropy (ln 256k < 13) or probability gap


def rank_keys(sig: Signals, *, criterion: str, idk_filter: bool) -> torch.Tensor:
    """Per-row sort key, lower is better: the entropy (``criterion="entropy"``), minus the top-token probability
    (``"max_prob"``) or the probability of starting the not-found answer (``"not_found_prob"``), plus
    :data:`ABSTAIN_PENALTY` on abstaining rows when ``idk_filter`` is on. A fixed penalty, not one relative to the rows
    at hand, so keys (and the scores made from them) compare across calls."""
    if criterion == "entropy":
        key = sig.entropy.float()
    elif criterion == "max_prob":
        key = -sig.top_prob.float()
    elif criterion == "not_found_prob":
        key = sig.not_found_prob.float()
    else:
        raise ValueError(f"criterion: expected 'entropy', 'max_prob' or 'not_found_prob', got {criterion!r}")
    if idk_filter:
        key = key + ABSTAIN_PENALTY * sig.idk.float()
    return key


def rank_order(sig: Signals, *, criterion: str, idk_filter: bool) -> list[int]:
    """Row indices best first. With ``idk_filter`` abstaining rows come after every answering row.

    ``criterion="entropy"`` ranks by lowest entropy, ``"max_prob"`` by highest top-token probability,
    ``"not_found_prob"`` by lowest probability of starting the not-found answer; ties keep the document order (stable
    sort), so the result is deterministic.
    """
    key = rank_keys(sig, criterion=criterion, idk_filter=idk_filter)
    return [int(i) for i in torch.sort(key, stable=True).indices]


def rank_chunks(chunks: Sequence[Chunk], sig: Signals, *, criterion: str, idk_filter: bool) -> tuple[ChunkScore, ...]:
    """Every chunk's :class:`ChunkScore`, best first; ``score`` is minus the sort key, so it sorts as ``rank``."""
    keys = rank_keys(sig, criterion=criterion, idk_filter=idk_filter)
    order = [int(i) for i in torch.sort(keys, stable=True).indices]
    return tuple(
        ChunkScore(
            chunk=chunks[i],
            rank=r,
            entropy=float(sig.entropy[i]),
            top_prob=float(sig.top_prob[i]),
            idk=bool(sig.idk[i]),
            score=-float(keys[i]),
            not_found_prob=float(sig.not_found_prob[i]),
        )
        for r, i in enumerate(order)
    )
