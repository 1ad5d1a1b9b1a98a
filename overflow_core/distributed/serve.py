"""A Ray Serve deployment that answers questions from a state index, batching concurrent requests.

``app(path, model, ...)`` returns a bound deployment: ``serve.run(app("corpus.idx"))`` starts it behind Serve's HTTP
proxy (``POST /`` with ``{"question": "...", "max_new_tokens": 20}``, the answer as JSON). Concurrent requests are
gathered by ``@serve.batch`` (up to ``max_batch_size``, waiting at most ``batch_wait_timeout_s``) and answered with
:meth:`DistributedIndex.answer_many`: one scatter to the shard actors and one decode round per batch instead of one per
question. Each shard actor still scores the batch's questions one after another (the index reads one question at a
time), so batching saves round trips and driver work, not model time.

Example:
    >>> from ray import serve  # doctest: +SKIP
    >>> from overflow_core.distributed.serve import app  # doctest: +SKIP
    >>> serve.run(app("corpus.idx", shard_actors=2))  # doctest: +SKIP
    >>> # curl -s localhost:8000/ -d '{"question": "What is the locker number of Alice Baker?"}'
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from overflow_core.distributed.cluster import require_ray
from overflow_core.errors import OverflowCoreError

__all__ = ["app"]


def app(
    path: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    shard_actors: int = 2,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_batch_size: int = 8,
    batch_wait_timeout_s: float = 0.02,
) -> Any:
    """The bound Serve application over the index at ``path`` (see the module docstring)."""
    require_ray(data=True, serve=True)
    from ray import serve

    from overflow_core.distributed.query import DistributedIndex

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class OverflowIndex:
        """Holds a :class:`DistributedIndex` (its shard actors are its own) and answers batches of questions."""

        def __init__(self) -> None:
            self.index = DistributedIndex(
                path, model, settings=settings, shard_actors=shard_actors, num_cpus=num_cpus, num_gpus=num_gpus
            )

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def answer(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
            """Answer a batch of ``{"question", "max_new_tokens"?}``: requests with the same decoding settings together."""
            out: list[dict[str, Any] | None] = [None] * len(requests)
            groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
            for n, r in enumerate(requests):
                groups.setdefault(tuple(sorted((k, v) for k, v in r.items() if k != "question")), []).append(n)
            for key, members in groups.items():
                try:
                    answers = await asyncio.to_thread(
                        self.index.answer_many, [requests[n]["question"] for n in members], **dict(key)
                    )
                    for n, a in zip(members, answers, strict=True):
                        out[n] = a.to_dict()
                except OverflowCoreError as exc:  # a bad request fails its own group with one line, not the replica
                    for n in members:
                        out[n] = {"error": str(exc)}
            return [o if o is not None else {"error": "not answered"} for o in out]

        async def __call__(self, request: Any) -> dict[str, Any]:
            try:
                body = await request.json()
            except ValueError:
                return {"error": "expected a JSON body like {\"question\": \"...\"}"}
            if not isinstance(body, dict) or not isinstance(body.get("question"), str):
                return {"error": "expected a JSON body like {\"question\": \"...\"}"}
            extra = {k: body[k] for k in ("max_new_tokens",) if k in body}
            return await self.answer({"question": body["question"], **extra})

    return OverflowIndex.bind()  # type: ignore[attr-defined]
