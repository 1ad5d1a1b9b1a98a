"""create_overflow_retriever_tool: the retriever as an agent tool whose errors reach the agent's model, not the caller."""

from __future__ import annotations

from typing import Literal

from langchain_core.prompts import BasePromptTemplate
from langchain_core.tools import StructuredTool, create_retriever_tool

from langchain_overflow.retrievers import OverflowRetriever

__all__ = ["create_overflow_retriever_tool"]


def create_overflow_retriever_tool(
    retriever: OverflowRetriever,
    name: str = "search_documents",
    description: str = "Search the documents for the passage that answers a question. Input: one question about one fact.",
    *,
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact",
    document_prompt: BasePromptTemplate[str] | None = None,
    document_separator: str = "\n\n",
) -> StructuredTool:
    """LangChain's retriever tool over ``retriever``, with ``handle_tool_error=True``.

    A query the engine cannot use (empty, longer than a chunk) raises :class:`QueryError`, a ``ToolException``; this
    tool returns its message to the model as an error ``ToolMessage`` (``status="error"``), so an agent reads what was
    wrong and can ask again, instead of the whole run failing (a plain ``create_retriever_tool`` re-raises it, and so
    does an agent's tool node by default). With ``response_format="content_and_artifact"`` (the default here) the
    retrieved Documents, scores included, travel as the ``ToolMessage``'s artifact.
    """
    tool = create_retriever_tool(
        retriever,
        name,
        description,
        document_prompt=document_prompt,
        document_separator=document_separator,
        response_format=response_format,
    )
    tool.handle_tool_error = True
    return tool
