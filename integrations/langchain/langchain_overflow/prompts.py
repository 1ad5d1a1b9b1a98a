"""Prompts for RAG chains: render the retriever's top chunk and the question exactly as the engine scored them.

The state handoff depends on it. The retriever caches the state after ``engine.user_message(chunk, question)``; a chat
model (or completion model) on the same engine that receives that very string as its only message finds the state in the
cache and decodes without running the prompt again. A prompt that wraps the chunk in other words works too, just without
the reuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.runnables import Runnable, RunnableLambda

from overflow_core import OPRM

__all__ = ["format_docs_for", "overflow_prompt", "overflow_rag_prompt"]


def overflow_prompt(engine: OPRM, context: Sequence[Document] | Document | str, question: str) -> str:
    """``engine.user_message(top chunk, question)``, where the top chunk is ``context[0]`` (OPRM answers from one chunk).

    Args:
        engine: the engine the retriever and the model share.
        context: the retriever's Documents, best first (only the first is used), one Document, or a text.
        question: the question the retriever was asked (the same string, so the prompt ids match).
    """
    if isinstance(context, str):
        text = context
    elif isinstance(context, Document):
        text = context.page_content
    elif context:
        text = context[0].page_content
    else:
        raise ValueError("context: expected at least one Document (the retriever's best chunk), got none")
    return engine.user_message(text, question)


def format_docs_for(engine: OPRM) -> Runnable[Mapping[str, Any], str]:
    """A runnable ``{"context": docs, "question": str} -> prompt string`` for :class:`OverflowLLM` chains."""

    def render(inputs: Mapping[str, Any]) -> str:
        return overflow_prompt(engine, inputs["context"], inputs["question"])

    return RunnableLambda(render, name="format_docs_for")


def overflow_rag_prompt(engine: OPRM) -> Runnable[Mapping[str, Any], ChatPromptValue]:
    """A runnable ``{"context": docs, "question": str} -> one human message`` for :class:`ChatOverflow` chains.

    Example:
        >>> chain = (
        ...     {"context": retriever, "question": RunnablePassthrough()}
        ...     | overflow_rag_prompt(engine)
        ...     | ChatOverflow(engine=engine)
        ...     | StrOutputParser()
        ... )  # doctest: +SKIP
    """

    def render(inputs: Mapping[str, Any]) -> ChatPromptValue:
        return ChatPromptValue(messages=[HumanMessage(overflow_prompt(engine, inputs["context"], inputs["question"]))])

    return RunnableLambda(render, name="overflow_rag_prompt")
