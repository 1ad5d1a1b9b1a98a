"""OverflowLLM: the OPRM engine's model as a LlamaIndex LLM that continues from the retriever's cached states."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import PromptTemplate

from overflow_core import OPRM

__all__ = ["OverflowLLM", "overflow_qa_template", "overflow_refine_template"]


def usage(generation: Any = None) -> dict[str, Any]:
    """The usage a completion reports in ``additional_kwargs``; with no generation (the LLM was not called), the same
    keys with zeros and no finish reason."""
    if generation is None:
        return {"prompt_forward_tokens": 0, "reused_tokens": 0, "generated_tokens": 0, "finish_reason": None}
    return {
        "prompt_forward_tokens": generation.prompt_forward_tokens,
        "reused_tokens": generation.reused_tokens,
        "generated_tokens": len(generation.token_ids),
        "finish_reason": generation.finish_reason,
    }

_T = TypeVar("_T")
_DONE = object()


def overflow_qa_template(engine: OPRM) -> PromptTemplate:
    """A ``text_qa_template`` that renders exactly ``engine.user_message(context_str, query_str)``.

    Given to a query engine, it makes the LLM's prompt for a retrieved node the very prompt the retriever scored, so the
    LLM's generation continues from the cached state instead of reading the node again.
    """
    t = engine.template
    return PromptTemplate(
        f"{t.prefix}{{context_str}}{t.infix}{{query_str}}{t.suffix}",
        function_mappings={"query_str": _stripped_query},  # user_message strips the question; so must the template
    )


def overflow_refine_template(engine: OPRM) -> PromptTemplate:
    """A ``refine_template`` in the engine's prompt format: the next context, with the answer so far as its last line.

    A refine step happens only when the retrieved text overflows one chunk's window; the model then reads the next
    window together with the earlier answer, as one document, and answers the question again.
    """
    t = engine.template
    return PromptTemplate(
        f"{t.prefix}{{context_msg}}\n\nEarlier answer: {{existing_answer}}{t.infix}{{query_str}}{t.suffix}",
        function_mappings={"query_str": _stripped_query},
    )


def _stripped_query(**kwargs: Any) -> str:
    return str(kwargs.get("query_str", "")).strip()


async def _aiter_in_thread(make: Callable[[], Iterator[_T]]) -> AsyncGenerator[_T, None]:
    """Run the blocking iterator ``make()`` to its end on one worker thread, handing its items to async code.

    One thread for the whole iteration: the engine's decoding loop holds thread-local torch state (inference mode)
    across its yields, so it must not be resumed from another thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))

    def run() -> None:
        try:
            for item in make():
                put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            put(_DONE, exc)
        else:
            put(_DONE)

    loop.run_in_executor(None, contextvars.copy_context().run, run)
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()


class OverflowLLM(CustomLLM):
    """The engine's model as a LlamaIndex LLM (a completion model; chat goes through the tokenizer's chat template).

    Prompts are mapped to token ids the engine's way (:meth:`OPRM.encode_prompt`), and generation reuses the longest
    prefix whose state the engine has cached. A prompt built with :func:`overflow_qa_template` from a node that an
    :class:`~llama_index.retrievers.overflow.OverflowRetriever` or
    :class:`~llama_index.postprocessor.overflow.OverflowRerank` on the same engine just returned is a full cache hit:
    no prompt token runs through the model again (``additional_kwargs["prompt_forward_tokens"] == 0``).

    ``metadata.context_window`` is the longest prompt the engine builds for one chunk (template + ``chunk_tokens`` of
    text + a question of up to ``chunk_tokens``) plus ``num_output``: what one chunk holds, not the model's nominal limit.

    Example:
        >>> llm = OverflowLLM(engine)  # doctest: +SKIP
        >>> llm.complete(engine.user_message(node_text, "What is the locker number of Alice Baker?")).text  # doctest: +SKIP
        '4412'
    """

    model_name: str = Field(default="", description="The engine's model name.")
    max_new_tokens: int | None = Field(default=None, description="Most tokens to generate (None: the engine's).", ge=0)
    temperature: float | None = Field(default=None, description="Sampling temperature; 0 is greedy.", ge=0)
    seed: int | None = Field(default=None, description="Seeds sampling when temperature > 0.")
    _engine: OPRM = PrivateAttr()

    def __init__(self, engine: OPRM, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", engine.name)
        super().__init__(**kwargs)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "OverflowLLM"

    @property
    def engine(self) -> OPRM:
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        cfg = self._engine.config
        num_output = self.max_new_tokens if self.max_new_tokens is not None else cfg.max_new_tokens
        prompt = self._engine.prompt_ids.overhead + 2 * cfg.chunk_tokens  # chunk and the longest accepted question
        return LLMMetadata(
            context_window=prompt + num_output, num_output=num_output, model_name=self.model_name, is_chat_model=False
        )

    def count_tokens(self, text: str) -> list[int]:
        """The model's token ids for ``text`` (a tokenizer for LlamaIndex's ``PromptHelper`` and node parsers)."""
        return list(self._engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation -----------------------------------------------------------------------------------------------------
    def _generation(self, ids: Sequence[int], kwargs: dict[str, Any], lstrip: bool | None = None) -> Any:
        decoding = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, **kwargs}
        seed = decoding.pop("seed", self.seed)
        options = {k: v for k, v in decoding.items() if v is not None}
        return self._engine.complete(ids, seed=seed, lstrip=lstrip, **options)

    def _prompt_ids(self, prompt: str, formatted: bool) -> list[int]:
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        return self._engine.encode_prompt(prompt)

    def _message_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self._engine.encode_messages([{"role": m.role.value, "content": m.content or ""} for m in messages])

    @staticmethod
    def _usage(generation: Any) -> dict[str, Any]:
        return usage(generation)

    def _complete_ids(
        self, ids: Sequence[int], kwargs: dict[str, Any], lstrip: bool | None = None
    ) -> CompletionResponse:
        generation = self._generation(ids, kwargs, lstrip)
        for _ in generation:
            pass
        return CompletionResponse(text=generation.text, additional_kwargs=self._usage(generation))

    def _stream_ids(
        self, ids: Sequence[int], kwargs: dict[str, Any], lstrip: bool | None = None
    ) -> CompletionResponseGen:
        generation = self._generation(ids, kwargs, lstrip)
        text = ""
        for piece in generation:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield CompletionResponse(text=generation.text, delta="", additional_kwargs=self._usage(generation))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete_ids(self._prompt_ids(prompt, formatted), kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream_ids(self._prompt_ids(prompt, formatted), kwargs)

    @staticmethod
    def _chat_response(response: CompletionResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
            delta=response.delta,
            additional_kwargs=response.additional_kwargs,
        )

    def _stream_chat_ids(self, ids: Sequence[int], kwargs: dict[str, Any]) -> ChatResponseGen:
        for response in self._stream_ids(ids, kwargs, lstrip=True):
            yield self._chat_response(response)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat_response(self._complete_ids(self._message_ids(messages), kwargs, lstrip=True))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat_ids(self._message_ids(messages), kwargs)

    # -- async: the model runs in worker threads so the event loop stays free --------------------------------------------
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        ids = self._prompt_ids(prompt, formatted)
        return await asyncio.to_thread(self._complete_ids, ids, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        ids = self._prompt_ids(prompt, formatted)
        return _aiter_in_thread(lambda: self._stream_ids(ids, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        ids = self._message_ids(messages)
        return self._chat_response(await asyncio.to_thread(self._complete_ids, ids, kwargs, True))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        ids = self._message_ids(messages)
        return _aiter_in_thread(lambda: self._stream_chat_ids(ids, kwargs))
