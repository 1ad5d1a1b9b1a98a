"""Prompts for RAG chains: render the retriever's top chunk and the question exactly as the engine scored them.

The state handoff depends on it. The retriever caches the state after the engine's prompt for each of its top chunks
and the question; a model on the same engine that receives that very prompt finds the state in the cache and decodes
without running the prompt again. OPRM answers from one chunk, so these prompts hold one: the first Document of the
context, which is the retriever's best (``rank`` 0). The other retrieved Documents are not in the prompt; they stay in
the chain's context, for citations. A prompt that wraps the chunk in other words works too, just without the reuse (and
the model warns :class:`HandoffWarning`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.runnables import Runnable, RunnableLambda

from langchain_overflow import _handoff
from langchain_overflow._documents import _one
from overflow_core import OPRM
from overflow_core.errors import InputError

__all__ = ["format_docs_for", "overflow_message", "overflow_prompt", "overflow_rag_prompt"]


def _engine_of(engine: Any) -> OPRM:
    """An engine, or the engine of a class built on one (ChatOverflow, OverflowLLM, OverflowRetriever, ...)."""
    if isinstance(engine, OPRM):
        return engine
    inner = getattr(engine, "engine", None)
    if isinstance(inner, OPRM):
        return inner
    raise InputError(
        f"engine: expected an overflow_core.OPRM engine or a class built on one, got {type(engine).__name__}"
    )


def _top_text(context: Any) -> str:
    """The text of the best (first) Document of ``context``: Documents best first, one Document-like, or a text."""
    if isinstance(context, str):
        return context
    if isinstance(context, Sequence) and not isinstance(context, tuple):
        if not context:
            raise InputError("context: expected at least one Document (the retriever's best chunk), got none")
        return _one(context[0], "context[0]").page_content
    return _one(context, "context").page_content


def overflow_prompt(engine: OPRM, context: Sequence[Document] | Document | str, question: str) -> str:
    """The engine's whole prompt for the top chunk and ``question``: ``engine.user_message(context[0], question)``.

    For completion models (:class:`OverflowLLM`): with a chat template, it holds the template's markers.

    Args:
        engine: the engine the retriever and the model share.
        context: the retriever's Documents, best first (only the first is used: OPRM answers from one chunk), one
            Document(-like), or a text.
        question: the question the retriever was asked (the same string, so the prompt ids match).
    """
    return _engine_of(engine).user_message(_top_text(context), question)


def overflow_message(engine: OPRM, context: Sequence[Document] | Document | str, question: str) -> str:
    """The content of the one human message for :class:`ChatOverflow`: instruction, top chunk and ``question``.

    The user turn only, never the chat template's markers: the chat model applies its template as for any message.
    """
    return _handoff.message_content(_engine_of(engine), _top_text(context), question)


def format_docs_for(engine: OPRM) -> Runnable[Mapping[str, Any], str]:
    """A runnable ``{"context": docs, "question": str} -> prompt string`` for :class:`OverflowLLM` chains.

    Uses ``context[0]``, the retriever's best chunk (see :func:`overflow_prompt`).
    """

    def render(inputs: Mapping[str, Any]) -> str:
        return overflow_prompt(engine, inputs["context"], inputs["question"])

    return RunnableLambda(render, name="format_docs_for")


def overflow_rag_prompt(engine: OPRM) -> Runnable[Mapping[str, Any], ChatPromptValue]:
    """A runnable ``{"context": docs, "question": str} -> one human message`` for :class:`ChatOverflow` chains.

    The message holds the retriever's best chunk (``context[0]``; OPRM answers from one chunk, the other Documents are
    not in the prompt) and the question, worded as the engine scored them, so :class:`ChatOverflow` on the same engine
    continues from the retriever's state. :func:`create_overflow_chain` builds the whole chain.

    Example:
        >>> chain = (
        ...     {"context": retriever, "question": RunnablePassthrough()}
        ...     | overflow_rag_prompt(engine)
        ...     | ChatOverflow(engine=engine)
        ...     | StrOutputParser()
        ... )  # doctest: +SKIP
    """

    def render(inputs: Mapping[str, Any]) -> ChatPromptValue:
        return ChatPromptValue(messages=[HumanMessage(overflow_message(engine, inputs["context"], inputs["question"]))])

    return RunnableLambda(render, name="overflow_rag_prompt")
