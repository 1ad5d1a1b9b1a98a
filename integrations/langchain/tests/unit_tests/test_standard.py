"""langchain-tests' standard unit suite for ChatOverflow.

Skipped by the suite itself, because they cannot apply: tool calling (``bind_tools``) and structured output
(``with_structured_output``). OPRM models answer from a document; they are not trained to emit tool calls or JSON, and
ChatOverflow does not pretend to (``has_tool_calling`` / ``has_structured_output`` are False, so those tests return
early). The suite's ``timeout``, ``max_retries`` and ``api_key`` are left out of its standard parameters: the model
runs in this process, and ChatOverflow refuses settings it would ignore. ``test_serdes`` skips because the model holds
a live engine and is not LangChain-serializable.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_overflow import ChatOverflow
from tests.engines import tiny_engine


class TestChatOverflowUnit(ChatModelUnitTests):
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
        return False  # one engine serves one model; a per-call ``model`` other than its own is an error

    @property
    def has_tool_calling(self) -> bool:
        return False  # bind_tools is overridden only to say why it is not supported

    @property
    def has_structured_output(self) -> bool:
        return False
