"""ChatOverflow: a LangChain chat model that decodes with an Overflow engine, continuing from cached states."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langchain_overflow._common import OverflowGenerationParams, generation_info, iterate_in_thread, usage

__all__ = ["ChatOverflow"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class ChatOverflow(OverflowGenerationParams, BaseChatModel):
    """A chat model over an :class:`overflow_core.OPRM` engine.

    Messages become prompt ids through ``engine.encode_messages``: a single human message rendered by
    :func:`langchain_overflow.overflow_rag_prompt` maps to exactly the prompt the retriever scored, so when
    :class:`OverflowRetriever` ran on the same engine and question just before, decoding starts from that chunk's cached
    state and no prompt token is run again (``response_metadata["prompt_forward_tokens"] == 0``). Anything else goes
    through the tokenizer's chat template and is prefilled as usual.

    Replies carry no leading whitespace (a model that copies a value from its context emits the value's space first).
    Usage metadata counts every prompt token as input; ``input_token_details["cache_read"]`` is the part whose state came
    from the cache. Tool calling and structured output are not supported.

    Example:
        >>> from overflow_core import OPRM
        >>> from langchain_overflow import ChatOverflow
        >>> chat = ChatOverflow(engine=OPRM.from_pretrained(), max_tokens=16)
        >>> chat.invoke("Hello").content  # doctest: +SKIP
    """

    streaming: bool = False
    """Stream token by token under ``invoke`` too (LangChain's backward-compatible flag)."""

    @property
    def _llm_type(self) -> str:
        return "overflow-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop if stop is not None else self.stop, **kwargs)
        params["ls_provider"] = "overflow"
        return params

    def _prompt_ids(self, messages: Sequence[BaseMessage]) -> list[int]:
        chat = [{"role": _ROLES.get(m.type, m.type), "content": m.text} for m in messages]
        return self.engine.encode_messages(chat)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt_ids = self._prompt_ids(messages)
        generation = self._complete(prompt_ids, stop, kwargs, lstrip=True)  # a reply has no leading space
        text = "".join(generation)
        message = AIMessage(
            content=text,
            usage_metadata=usage(prompt_ids, generation),
            response_metadata=generation_info(self.model, generation),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt_ids = self._prompt_ids(messages)
        generation = self._complete(prompt_ids, stop, kwargs, lstrip=True)  # a reply has no leading space
        for piece in generation:  # one piece per decoded token (less while a stop string may be forming)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage(prompt_ids, generation),
                response_metadata=generation_info(self.model, generation),
                chunk_position="last",
            )
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        sync_manager = run_manager.get_sync() if run_manager is not None else None
        async for chunk in iterate_in_thread(lambda: self._stream(messages, stop, sync_manager, **kwargs)):
            yield chunk
