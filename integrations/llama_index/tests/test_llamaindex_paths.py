"""Every default LlamaIndex entry point with the bundled model and an OverflowLLM, checked by its answer: the query
engines (``index.as_query_engine``, ``RetrieverQueryEngine.from_args``, the package's own), the synthesizer modes, streaming
and async, every chat engine, and agents (a FunctionAgent and a ReActAgent, driven by scripted LLMs, calling Overflow
tools). The index is a VectorStoreIndex with a MockEmbedding (LlamaIndex's default embedding model is a hosted one):
its retrieval order means nothing, so the answer comes from the OverflowLLM reading the packed context with OPRM.

At 8650456 the OverflowLLM advertised a 573-token window and every path here except the simple chat engine and the
package's query engine failed with "Chunk size -30 is not positive" (or, for refine, made dozens of calls on 2-3-word
pieces and answered "not found")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine.types import ChatMode
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation.events.llm import LLMCompletionStartEvent
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import AsyncBaseTool, QueryEngineTool, RetrieverTool, ToolSelection
from llama_index.llms.overflow import OverflowLLM
from llama_index.postprocessor.overflow import OverflowRerank
from llama_index.query_engine.overflow import NOT_FOUND_ANSWER, OverflowQueryEngine
from llama_index.retrievers.overflow import OverflowRetriever, node_text
from llamaindex_data import ANSWER, FACT, QUESTION, ScriptedLLM, long_documents

from overflow_core import OPRM

TOP_K = 3  # every document: the packed context is several of the bundled model's chunks


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    """Three short reports (one chunk each), the second with the fact."""
    return long_documents(chars=700)


@pytest.fixture(scope="module")
def index(documents: list[Document]) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture
def llm(bundled: OPRM) -> OverflowLLM:
    return OverflowLLM(bundled)


def completions(events: list[Any]) -> int:
    return sum(isinstance(e, LLMCompletionStartEvent) for e in events)


@pytest.mark.parametrize("mode", ["compact", "refine", "tree_summarize", "simple_summarize"])
def test_as_query_engine_in_each_synthesizer_mode(
    index: VectorStoreIndex, llm: OverflowLLM, mode: str, events: list[Any]
) -> None:
    response = index.as_query_engine(llm=llm, response_mode=mode, similarity_top_k=TOP_K).query(QUESTION)
    assert str(response).strip() == ANSWER, f"{mode}: {response}"
    assert len(response.source_nodes) == TOP_K
    assert completions(events) <= TOP_K, "at most one LLM call per node (refine), one for the packed modes"
    if mode != "refine":
        assert completions(events) == 1


def test_accumulate_answers_node_by_node(index: VectorStoreIndex, llm: OverflowLLM) -> None:
    response = index.as_query_engine(llm=llm, response_mode="accumulate", similarity_top_k=TOP_K).query(QUESTION)
    parts = str(response).split("---------------------")
    assert len(parts) == TOP_K and sum(ANSWER in p for p in parts) == 1, str(response)


def test_retriever_query_engine_from_args_continues_the_retrievers_state(
    bundled: OPRM, documents: list[Document], llm: OverflowLLM, spy_complete: Any
) -> None:
    generations = spy_complete(bundled)
    retriever = OverflowRetriever(bundled, documents, similarity_top_k=1)
    response = RetrieverQueryEngine.from_args(retriever, llm=llm).query(QUESTION)
    assert str(response).strip() == ANSWER
    assert FACT in node_text(response.source_nodes[0].node)
    assert [g.prompt_forward_tokens for g in generations] == [0], "the LLM re-read the prompt the retriever had run"


def test_streaming_query_engine(index: VectorStoreIndex, llm: OverflowLLM) -> None:
    response = index.as_query_engine(llm=llm, streaming=True, similarity_top_k=TOP_K).query(QUESTION)
    assert "".join(response.response_gen).strip() == ANSWER  # type: ignore[union-attr,arg-type]


async def test_async_query_engine(index: VectorStoreIndex, llm: OverflowLLM) -> None:
    response = await index.as_query_engine(llm=llm, similarity_top_k=TOP_K).aquery(QUESTION)
    assert str(response).strip() == ANSWER


def test_overflow_query_engine_streams_and_says_not_found(bundled: OPRM, documents: list[Document]) -> None:
    response = OverflowQueryEngine.from_documents(bundled, documents, streaming=True).query(QUESTION)
    assert "".join(response.response_gen) == ANSWER  # type: ignore[union-attr]
    assert response.metadata is not None and response.metadata["not_found"] is False
    without = [d for d in documents if FACT not in d.text]
    assert str(OverflowQueryEngine.from_documents(bundled, without).query(QUESTION)) == NOT_FOUND_ANSWER


@pytest.mark.parametrize("mode", ["condense_question", "context", "condense_plus_context"])
def test_chat_engines_answer_every_turn(index: VectorStoreIndex, llm: OverflowLLM, mode: str) -> None:
    chat_engine = index.as_chat_engine(chat_mode=ChatMode(mode), llm=llm, similarity_top_k=TOP_K)
    first = chat_engine.chat(QUESTION)
    second = chat_engine.chat(QUESTION)  # with a chat history now: condense prompts, history in the messages
    assert (str(first).strip(), str(second).strip()) == (ANSWER, ANSWER), mode
    streamed = chat_engine.stream_chat(QUESTION)
    assert "".join(streamed.response_gen).strip() == ANSWER


def test_simple_chat_engine(index: VectorStoreIndex, llm: OverflowLLM, bundled: OPRM) -> None:
    """No retrieval: the user's message is the model's whole input (here the engine's own prompt around a passage)."""
    chat_engine = index.as_chat_engine(chat_mode=ChatMode.SIMPLE, llm=llm)
    assert str(chat_engine.chat(bundled.user_message(FACT, QUESTION))).strip() == ANSWER


def test_retriever_tool_scores_the_question(bundled: OPRM, documents: list[Document]) -> None:
    """RetrieverTool sends "\\ninput is <question>\\n". Scored as it is, that wrapper makes the bundled model abstain on
    every chunk and the passage with the fact is not first (at 8650456 the tool returned a wrong passage, silently);
    the retriever and the re-ranker score the question inside it."""
    retriever = OverflowRetriever(bundled, documents, similarity_top_k=1)
    wrapped = f"\ninput is {QUESTION}\n"
    as_sent = bundled.rank(wrapped, [node_text(d) for d in documents], k=1).scores[0]
    assert FACT not in as_sent.chunk.text and as_sent.idk, "the wrapper is what made the tool return a wrong passage"
    output = RetrieverTool.from_defaults(retriever, name="search", description="Finds passages.").call(input=QUESTION)
    assert FACT in output.content
    rerank = OverflowRerank(bundled, top_n=1)
    given = [NodeWithScore(node=TextNode(text=d.text)) for d in documents]
    assert FACT in rerank.postprocess_nodes(given, query_str=wrapped)[0].node.get_content()


# -- agents: scripted LLMs decide to call an Overflow tool, the tool's output must carry the answer ------------------------
def scripted_function_caller(tool_name: str, question: str) -> MockFunctionCallingLLM:
    """A function-calling LLM that calls ``tool_name`` with the question, then answers with the tool output's line that
    names the question's subject (``Alice Baker``)."""

    def respond(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
        results = [m for m in messages if m.role == MessageRole.TOOL]
        if not results:
            call = ToolSelection(tool_id="call-1", tool_name=tool_name, tool_kwargs={"input": question})
            return ChatMessage(role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": [call]})
        output = str(results[-1].content)
        lines = [s.strip() for s in output.replace("\n", ". ").split(". ") if "Alice Baker" in s] or [output.strip()]
        return ChatMessage(role=MessageRole.ASSISTANT, content=lines[0].rstrip(".") + ("." if "is" in lines[0] else ""))

    return MockFunctionCallingLLM(response_generator=respond, is_chat_model=True)


def tools(bundled: OPRM, index: VectorStoreIndex, documents: list[Document]) -> dict[str, AsyncBaseTool]:
    llm = OverflowLLM(bundled)
    return {
        "retriever": RetrieverTool.from_defaults(
            OverflowRetriever(bundled, documents, similarity_top_k=1),
            name="search_reports",
            description="Finds the passage of the reports that answers a question.",
        ),
        "query_engine": QueryEngineTool.from_defaults(
            index.as_query_engine(llm=llm, similarity_top_k=TOP_K),
            name="ask_reports",
            description="Answers questions about the reports.",
        ),
    }


@pytest.mark.parametrize("kind", ["retriever", "query_engine"])
async def test_function_agent_calls_an_overflow_tool(
    bundled: OPRM, index: VectorStoreIndex, documents: list[Document], kind: str
) -> None:
    tool = tools(bundled, index, documents)[kind]
    agent = FunctionAgent(tools=[tool], llm=scripted_function_caller(tool.metadata.get_name(), QUESTION))
    handler = agent.run(user_msg=QUESTION)
    calls = [e async for e in handler.stream_events() if type(e).__name__ == "ToolCallResult"]
    answer = str((await handler).response.content).strip()  # type: ignore[attr-defined]
    assert len(calls) == 1 and calls[0].tool_kwargs == {"input": QUESTION}
    output = str(calls[0].tool_output.content)
    if kind == "retriever":
        assert FACT in output, f"the retriever tool must return the passage with the fact, got {output[:300]!r}"
        assert answer == FACT
    else:
        assert output.strip() == ANSWER and answer == ANSWER


@pytest.mark.parametrize("kind", ["retriever", "query_engine"])
async def test_react_agent_calls_an_overflow_tool(
    bundled: OPRM, index: VectorStoreIndex, documents: list[Document], kind: str
) -> None:
    tool = tools(bundled, index, documents)[kind]
    scripted = ScriptedLLM(tool_name=tool.metadata.get_name(), question=QUESTION)
    output = await ReActAgent(tools=[tool], llm=scripted).run(user_msg=QUESTION)
    observation = scripted.prompts[1].rsplit("Observation:", 1)[1]
    assert json.dumps({"input": QUESTION}) in scripted.prompts[1] or QUESTION in scripted.prompts[1]
    if kind == "retriever":
        assert FACT in observation, f"the observation must hold the passage with the fact, got {observation[:300]!r}"
    else:
        assert str(output.response.content).strip() == ANSWER  # type: ignore[attr-defined]
