"""Overflow in an agent, on a tiny random model: a bad query becomes an error the agent's model reads (ToolException,
an error ToolMessage), not a crashed run; langchain's create_agent driven by a scripted tool-calling model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, ToolException

from langchain_overflow import OverflowRetriever
from overflow_core import OPRM
from tests.engines import QUESTION, tiny_corpus

LONG = "Which of the many people mentioned in all of these long reports " * 12 + "has locker 4412?"


class ScriptedToolCaller(GenericFakeChatModel):
    """A stand-in for a tool-calling chat model: replays its messages, accepts any tools."""

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool], **kwargs: Any) -> Any:
        return self


def _call(query: str, call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "search_records", "args": {"query": query}, "id": call_id}])


@pytest.fixture
def retriever(engine: OPRM) -> OverflowRetriever:
    return OverflowRetriever(engine=engine, documents=[Document(t, metadata=m) for t, m in tiny_corpus()], k=2)


@pytest.mark.parametrize(("query", "message"), [("", "query: expected a question"), (LONG, "at most 48 tokens")])
def test_a_bad_query_raises_a_tool_exception_with_a_readable_message(
    retriever: OverflowRetriever, query: str, message: str
) -> None:
    with pytest.raises(ToolException, match=message) as raised:
        retriever.invoke(query)
    assert isinstance(raised.value, ValueError), "code that catches ValueError keeps working"


def test_the_tool_returns_the_error_to_the_model(retriever: OverflowRetriever) -> None:
    from langchain_overflow import create_overflow_retriever_tool

    tool = create_overflow_retriever_tool(retriever, "search_records", "Search the records.")
    bad = tool.invoke({"type": "tool_call", "name": "search_records", "args": {"query": "  "}, "id": "1"})
    assert isinstance(bad, ToolMessage) and bad.status == "error" and "query: expected a question" in bad.content
    good = tool.invoke({"type": "tool_call", "name": "search_records", "args": {"query": QUESTION}, "id": "2"})
    assert good.status == "success" and len(good.artifact) == 2 and good.artifact[0].page_content in good.content


def test_create_agent_recovers_from_bad_tool_calls(retriever: OverflowRetriever) -> None:
    from langchain.agents import create_agent

    from langchain_overflow import create_overflow_retriever_tool

    tool = create_overflow_retriever_tool(retriever, "search_records", "Search the records.")
    script = iter([_call("", "c1"), _call(LONG, "c2"), _call(QUESTION, "c3"), AIMessage("done")])
    agent = create_agent(model=ScriptedToolCaller(messages=script), tools=[tool])
    result = agent.invoke({"messages": [("user", QUESTION)]})
    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.status for m in tool_messages] == ["error", "error", "success"]
    assert "query: expected a question" in tool_messages[0].content
    assert "at most 48 tokens" in tool_messages[1].content
    assert result["messages"][-1].content == "done"


def test_the_chain_as_a_tool_takes_a_question_and_gives_the_chains_answer(retriever: OverflowRetriever) -> None:
    """docs/langchain.md's recipe: ``(create_overflow_chain(...) | StrOutputParser()).as_tool(...)``. Without the
    chain's declared input type LangChain refuses to make the tool (TypeError: its input was ``Any``)."""
    from langchain.agents import create_agent
    from langchain_core.output_parsers import StrOutputParser

    from langchain_overflow import ChatOverflow, create_overflow_chain

    chain = create_overflow_chain(retriever, ChatOverflow(engine=retriever.engine, max_tokens=4)) | StrOutputParser()
    tool = chain.as_tool(name="ask_records", description="Answer one question about the records.")
    assert set(tool.args) == {"question"}
    expected = chain.invoke(QUESTION)
    assert expected and tool.invoke({"question": QUESTION}) == expected
    assert chain.invoke({"question": QUESTION}) == chain.invoke({"input": QUESTION}) == expected

    call = AIMessage("", tool_calls=[{"name": "ask_records", "args": {"question": QUESTION}, "id": "c1"}])
    agent = create_agent(model=ScriptedToolCaller(messages=iter([call, AIMessage("done")])), tools=[tool])
    tool_messages = [m for m in agent.invoke({"messages": [("user", QUESTION)]})["messages"] if isinstance(m, ToolMessage)]
    assert [(m.status, m.content) for m in tool_messages] == [("success", expected)]
