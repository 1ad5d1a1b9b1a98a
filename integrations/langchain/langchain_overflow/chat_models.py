"""ChatOverflow: a LangChain chat model that decodes with an Overflow engine, continuing from cached states."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict

from langchain_overflow import _handoff
from langchain_overflow._common import OverflowGenerationParams, generation_info, iterate_in_thread, usage
from overflow_core.decode import Generation

__all__ = ["ChatOverflow"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_NO_TOOLS = (
    "ChatOverflow does not support {what}: OPRM models are trained to answer a question from a document, not to emit "
    "tool calls or JSON. Give the agent a tool-calling chat model and Overflow as its tool "
    "(create_overflow_retriever_tool(retriever, ...), or create_overflow_chain(retriever).as_tool(...)); "
    "see docs/langchain.md, 'Overflow in an agent'"
)


class ChatOverflow(OverflowGenerationParams, BaseChatModel):
    """A chat model over an :class:`overflow_core.OPRM` engine.

    Build it on an engine (``ChatOverflow(engine=engine)``), load one now (``ChatOverflow.from_pretrained(path,
    **engine_settings)``) or on first use (``ChatOverflow(model=path, engine_kwargs={...})``); classes loaded from the
    same ``model`` and settings share one engine. Unknown arguments are refused.

    Messages become prompt ids through the tokenizer's chat template. The one human message rendered by
    :func:`langchain_overflow.overflow_rag_prompt` maps to exactly the prompt the retriever scored, so when
    :class:`OverflowRetriever` ran on the same engine and question just before, decoding starts from that chunk's cached
    state and no prompt token is run again (``response_metadata["prompt_forward_tokens"] == 0``;
    :func:`langchain_overflow.create_overflow_chain` builds that chain). A call that holds a recently retrieved chunk
    and its question but missed that state (another wording, a system message, a second engine) warns
    :class:`HandoffWarning`, or raises :class:`HandoffError` with ``strict_handoff=True``.

    Replies carry no leading whitespace (a model that copies a value from its context emits the value's space first),
    and end at the engine's stop strings, at ``stop``, and where the model starts writing its prompt format again (a
    special token, a new ``Question:`` or ``</doc>`` line; ``stop_at_prompt_markers=False`` turns that off). Decoding
    fields are checked when the model is built. A deep copy shares the engine; a pickle loads the model again where it
    is unpickled when it was built from ``model=`` or ``from_pretrained``, and is refused (saying why) on ``engine=``.
    Usage metadata counts every prompt token as input; ``input_token_details["cache_read"]`` is the part whose state came
    from the cache. ``response_metadata["model_name"]`` (and ``ls_model_name`` in traces) is ``name@fingerprint``: the
    fingerprint identifies the checkpoint and settings loaded, and is part of LangChain's LLM cache key. Tool calling
    and structured output are not supported (``bind_tools`` says so).

    Example:
        >>> from langchain_overflow import ChatOverflow
        >>> chat = ChatOverflow.from_pretrained(max_tokens=16)  # the bundled model
        >>> chat.invoke("Hello").content  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    streaming: bool = False
    """Stream token by token under ``invoke`` too (LangChain's backward-compatible flag)."""

    @property
    def _llm_type(self) -> str:
        return "overflow-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop if stop is not None else self.stop, **kwargs)
        params["ls_provider"] = "overflow"
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else self._model_name
        return params

    def _prompt_ids(self, messages: Sequence[BaseMessage]) -> list[int]:
        engine = self.engine
        if len(messages) == 1 and messages[0].type == "human":
            parsed = _handoff.parse_message(engine, messages[0].text)
            if parsed is not None:  # the RAG prompt: exactly the ids the engine scored
                return engine.encode_prompt(engine.template.render(*parsed))
        chat = [{"role": _ROLES.get(m.type, m.type), "content": m.text} for m in messages]
        return engine.encode_messages(chat)

    def _check_handoff(
        self, messages: Sequence[BaseMessage], prompt_ids: Sequence[int], generation: Generation
    ) -> None:
        _handoff.check(
            self,
            self.engine,
            prompt_ids,
            int(getattr(generation, "prompt_forward_tokens", 0)),
            "\n".join(m.text for m in messages),
            kind="chat",
            n_messages=len(messages),
            has_system=any(m.type == "system" for m in messages),
        )

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the prompt these messages become: through the chat template, special tokens included."""
        if tools:
            warnings.warn("ChatOverflow takes no tools; their schemas are not counted", UserWarning, stacklevel=2)
        return len(self._prompt_ids(messages))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Not supported: raises :class:`NotImplementedError` saying why and what to do instead."""
        raise NotImplementedError(_NO_TOOLS.format(what="tool calling (bind_tools)"))

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Not supported: raises :class:`NotImplementedError` saying why."""
        raise NotImplementedError(_NO_TOOLS.format(what="structured output (with_structured_output)"))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt_ids = self._prompt_ids(messages)
        generation = self._complete(prompt_ids, stop, kwargs, lstrip=True)  # a reply has no leading space
        self._check_handoff(messages, prompt_ids, generation)
        text = "".join(generation)
        message = AIMessage(
            content=text,
            usage_metadata=usage(prompt_ids, generation),
            response_metadata=generation_info(self._model_name, generation),
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
        self._check_handoff(messages, prompt_ids, generation)
        for piece in generation:  # one piece per decoded token (less while a stop string may be forming)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage(prompt_ids, generation),
                response_metadata=generation_info(self._model_name, generation),
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
