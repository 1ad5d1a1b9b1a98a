"""The slow oracle: each chunk alone, unpadded, unbatched, and decoding by full recomputation without any cache.

Nothing here uses a backend, a cache object, padding or batching, so it is the yardstick the fast path is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from overflow_core.scoring import entropy, idk_flags, not_found_prob, phrase_probability

__all__ = ["reference_greedy", "reference_last_logits", "reference_scores"]


@torch.inference_mode()
def reference_last_logits(model: Any, prompt: Sequence[int]) -> torch.Tensor:
    """Next-token logits ``[V]`` after ``prompt``, from one plain forward over it."""
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=model.device)
    return model(input_ids=ids, use_cache=False).logits[0, -1].float()


def reference_scores(
    model: Any, prompts: Sequence[Sequence[int]], idk_ids: frozenset[int]
) -> tuple[list[float], list[bool], list[float]]:
    """Entropy, IDK flag and not-found probability of every prompt, each run alone: of the whole phrase by one full forward
    over prompt + phrase when ``idk_ids`` carries its ``sequences`` (see :class:`~overflow_core.prompting.NotFoundIds`),
    else of its first token."""
    logits = torch.stack([reference_last_logits(model, p) for p in prompts])
    ent = [float(x) for x in entropy(logits)]
    sequences = getattr(idk_ids, "sequences", ())
    if all(len(seq) == 1 for seq in sequences):
        return ent, [bool(x) for x in idk_flags(logits, idk_ids)], [float(x) for x in not_found_prob(logits, idk_ids)]
    probs, flags = [0.0] * len(prompts), [False] * len(prompts)
    for i, prompt in enumerate(prompts):
        for seq in sequences:  # the whole phrase after the prompt, one plain forward per tokenization
            ids = torch.tensor([[*prompt, *seq[:-1]]], dtype=torch.long, device=model.device)
            with torch.inference_mode():
                steps = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 :].float()
            p, greedy = phrase_probability(steps[:1], seq, steps[None, 1:] if len(seq) > 1 else None)
            probs[i] += float(p[0])
            flags[i] = flags[i] or bool(greedy[0])
    return ent, flags, probs


@torch.inference_mode()
def reference_greedy(model: Any, prompt: Sequence[int], max_new_tokens: int, stop_ids: frozenset[int]) -> list[int]:
    """Greedy continuation of ``prompt``, recomputing the whole sequence for every new token."""
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(reference_last_logits(model, ids).argmax())
        if token in stop_ids:
            break
        out.append(token)
        ids.append(token)
    return out
