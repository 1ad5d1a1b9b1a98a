"""What the chat model and the completion model share: their decoding fields and the one engine call they both make.

Both translate LangChain arguments to :meth:`overflow_core.OPRM.complete` keyword arguments and LangChain usage fields;
neither holds any tensor math.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, model_validator

from overflow_core import OPRM
from overflow_core.chunking import encode_text
from overflow_core.decode import Generation

__all__ = ["OverflowGenerationParams", "generation_info", "iterate_in_thread", "usage"]

T = TypeVar("T")

_PER_CALL = ("temperature", "max_tokens", "top_k", "top_p", "seed")


class OverflowGenerationParams(BaseModel):
    """Decoding settings of :class:`ChatOverflow` and :class:`OverflowLLM`; every one can also be given per call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: OPRM = Field(exclude=True, repr=False)
    """The engine that ranks and decodes; share it with :class:`OverflowRetriever` for the state handoff."""
    model: str = ""
    """The model's name (reported as ``response_metadata["model_name"]``); defaults to the engine's."""
    temperature: float = 0.0
    """0 is greedy decoding."""
    max_tokens: int | None = None
    """Most tokens to generate; ``None`` uses the engine's ``max_new_tokens``."""
    top_k: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    """Strings that end the output (not included in it); added to the engine's own stop strings."""
    seed: int | None = None
    """Seeds sampling when ``temperature > 0``."""

    @model_validator(mode="after")
    def _default_model_name(self) -> OverflowGenerationParams:
        if not self.model:
            self.model = self.engine.name
        return self

    def _decoding(self, stop: Sequence[str] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """``OPRM.complete`` keyword arguments from the fields, the call's ``stop`` and the call's overrides."""
        unknown = set(overrides) - {*_PER_CALL, "model"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; expected some of {sorted(_PER_CALL)}")
        if overrides.get("model", self.model) != self.model:
            raise ValueError(
                f"model: this instance serves {self.model!r} (one engine, one model); got {overrides['model']!r}"
            )
        values = {name: overrides.get(name, getattr(self, name)) for name in _PER_CALL}
        stops = [*self.engine.config.stop, *(stop if stop is not None else self.stop or [])]
        decoding: dict[str, Any] = {
            "temperature": values["temperature"],
            "max_new_tokens": values["max_tokens"],
            "top_k": values["top_k"],
            "top_p": values["top_p"],
            "stop": list(dict.fromkeys(stops)),
        }
        return {"seed": values["seed"], **{k: v for k, v in decoding.items() if v is not None}}

    def _complete(
        self,
        prompt_ids: Sequence[int],
        stop: Sequence[str] | None,
        overrides: Mapping[str, Any],
        *,
        lstrip: bool | None = None,
    ) -> Generation:
        """Start decoding after ``prompt_ids`` (from the cached state of their longest cached prefix, if any).

        ``lstrip``: see :meth:`overflow_core.OPRM.complete` (chat replies pass ``True``).
        """
        return self.engine.complete(prompt_ids, lstrip=lstrip, **self._decoding(stop, overrides))

    def get_token_ids(self, text: str) -> list[int]:
        """The engine tokenizer's ids for ``text`` (LangChain's default would load GPT-2's tokenizer)."""
        return list(encode_text(self.engine.tokenizer, text))


def usage(prompt_ids: Sequence[int], generation: Generation) -> UsageMetadata:
    """LangChain ``usage_metadata``: every prompt token counts as input; ``cache_read`` is the part whose state was reused."""
    reused = int(getattr(generation, "reused_tokens", 0))
    counts = {
        "input_tokens": len(prompt_ids),
        "output_tokens": len(generation.token_ids),
        "total_tokens": len(prompt_ids) + len(generation.token_ids),
        "input_token_details": {"cache_read": reused},
    }
    # a cast, not UsageMetadata(...): the repo-root mypy config (python_version 3.10) misreads its typing.NotRequired keys
    return cast("UsageMetadata", counts)


def generation_info(model: str, generation: Generation) -> dict[str, Any]:
    """What a response's metadata reports about one generation."""
    return {
        "model_name": model,
        "finish_reason": generation.finish_reason,
        "prompt_forward_tokens": int(getattr(generation, "prompt_forward_tokens", 0)),
        "reused_tokens": int(getattr(generation, "reused_tokens", 0)),
    }


async def iterate_in_thread(items: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run the blocking iterator ``items()`` to its end in one worker thread; yield its items on the event loop as they come.

    One thread for the whole iteration, not one executor call per item (LangChain's default ``_astream``): decoding
    keeps thread-local torch state (inference mode) open from token to token, so it must not resume on another thread.
    If the consumer stops early, the producer stops after its current item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stopped = threading.Event()

    def produce() -> None:
        try:
            for item in items():
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                if stopped.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    producer = asyncio.ensure_future(run_in_executor(None, produce))
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        stopped.set()
        if producer.done():
            await producer
