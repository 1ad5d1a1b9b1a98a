"""langchain-tests' standard integration suites for OverflowRetriever and ChatOverflow, on a tiny random model.

The suites check plumbing (types, k, streaming, async, batching, usage metadata, stop sequences), not content, so a tiny
random model is enough and keeps them fast; the content tests are in ``test_bundled.py``.

Skipped by the suite itself, because they cannot apply to a model that cannot call tools: tool calling, tool choice,
tool-message histories, the agent loop, structured output and JSON mode (OPRM models answer from a document; they are
not trained to emit tool calls or JSON). Also skipped: image / audio / PDF inputs (text-only models), model override
(one engine, one model), and ``test_stream_time`` (a VCR cassette benchmark for HTTP APIs; there is no HTTP here).
"""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests

from langchain_overflow import ChatOverflow, OverflowRetriever
from tests.engines import tiny_corpus, tiny_engine


class TestOverflowRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return OverflowRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        docs = [Document(page_content=text, metadata=meta) for text, meta in tiny_corpus()]
        return {"engine": tiny_engine(), "documents": docs, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "What is the locker number of Alice Baker?"


class TestChatOverflowStandard(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatOverflow

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": tiny_engine()}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # the suite's defaults less timeout, max_retries and api_key: the model runs in this process (no request to
        # time out, retry or authenticate), and ChatOverflow refuses settings it would ignore
        params = dict(super().standard_chat_model_params)
        for name in ("timeout", "max_retries", "api_key"):
            params.pop(name, None)
        return params

    @property
    def supports_model_override(self) -> bool:
        return False  # one engine serves one model

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False
