"""create_overflow_chain: retriever + prompt + chat model as one runnable whose handoff holds by construction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (as_tool builds a schema)

from langchain_overflow.chat_models import ChatOverflow
from langchain_overflow.prompts import overflow_rag_prompt
from langchain_overflow.retrievers import OverflowRetriever
from overflow_core import OPRM

__all__ = ["OverflowChainInput", "create_overflow_chain"]


class OverflowChainInput(TypedDict):
    """The chain's declared input: its ``input_schema``, and the arguments of ``chain.as_tool(...)``.

    One question; a plain string, or ``{"input": ...}``, is taken as well.
    """

    question: str


def _question(value: Any) -> str:
    """The question from the chain's input: a string, or a mapping with ``"question"`` (or ``"input"``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("question", "input"):
            if isinstance(value.get(key), str):
                return str(value[key])
    raise ValueError(
        f"input: expected a question (a string, or a dict with a 'question' or 'input' string), got {type(value).__name__}"
    )


def create_overflow_chain(
    retriever: OverflowRetriever,
    model: ChatOverflow | None = None,
    *,
    return_context: bool = False,
) -> Runnable[Any, Any]:
    """The RAG chain ``question -> retriever -> overflow_rag_prompt -> ChatOverflow``, with the handoff guaranteed.

    The chat model runs on the retriever's engine (``model=None`` builds one; a ``model`` on another engine is refused),
    the question reaches both unchanged, and the prompt is the engine's own for the retriever's best chunk, so the chat
    model continues from the state the retriever left in the engine's cache: no prompt token runs twice
    (``response_metadata["prompt_forward_tokens"] == 0``). If that state is gone (a ``state_cache_bytes`` too small for
    it), the model warns :class:`HandoffWarning` (raises with ``strict_handoff=True``).

    With ``k > 1`` the answer still comes from the best chunk (OPRM answers from one chunk); the other chunks are
    returned in ``"context"`` with ``return_context=True``, for citations.

    Args:
        retriever: an :class:`OverflowRetriever` (over documents or a state index).
        model: the chat model (decoding settings, callbacks, ``strict_handoff``); None builds ``ChatOverflow`` on the
            retriever's engine.
        return_context: return ``{"question", "context", "answer"}`` (``answer`` an ``AIMessage``) instead of the
            ``AIMessage`` alone.

    Input: the question, as a string or ``{"question": ...}`` / ``{"input": ...}``. The declared input type is
    :class:`OverflowChainInput` (``{"question": str}``), so ``chain.as_tool(name=..., description=...)`` makes a tool
    whose one argument is ``question``.

    Example:
        >>> chain = create_overflow_chain(retriever, ChatOverflow(engine=retriever.engine, max_tokens=16))
        >>> chain.invoke("What is the locker number of Alice Baker?").content  # doctest: +SKIP
        '4412'
    """
    if not isinstance(retriever, OverflowRetriever):
        raise TypeError(f"retriever: expected an OverflowRetriever, got {type(retriever).__name__}")
    engine = retriever._scoring_engine()
    if not isinstance(engine, OPRM):
        raise ValueError("retriever: its index has no engine (.engine); the chain needs the engine that ranked")
    if model is None:
        model = ChatOverflow(engine=engine)
    elif not isinstance(model, ChatOverflow):
        raise TypeError(f"model: expected a ChatOverflow on the retriever's engine, got {type(model).__name__}")
    elif model.engine is not engine:
        raise ValueError(
            "model: expected a ChatOverflow on the retriever's engine (the retriever's states live in that engine's "
            "cache); got one on another engine. Build it with ChatOverflow(engine=retriever.engine, ...)"
        )
    retrieve = RunnableLambda(_question, name="question") | RunnableParallel(
        question=RunnablePassthrough(), context=retriever
    )
    answer = overflow_rag_prompt(engine) | model
    chain = (retrieve | RunnablePassthrough.assign(answer=answer)) if return_context else (retrieve | answer)
    return chain.with_types(input_type=OverflowChainInput).with_config(run_name="overflow_chain")
