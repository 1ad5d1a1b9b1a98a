"""The retriever and the query engine as agent tools: a ReActAgent driven by a scripted LLM calls them, and the tool
output must reach that LLM (tiny random model: the plumbing; the bundled model's content is checked elsewhere)."""

from __future__ import annotations

from llama_index.core.tools import QueryEngineTool, RetrieverTool
from llama_index.query_engine.overflow import OverflowQueryEngine
from llama_index.retrievers.overflow import OverflowRetriever, node_text
from llamaindex_data import QUESTION, run_agent, tiny_documents

from overflow_core import OPRM


async def test_retriever_tool_output_reaches_the_agents_llm(tiny_engine: OPRM) -> None:
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=1)
    tool = RetrieverTool.from_defaults(
        retriever, name="search_documents", description="Finds passages in the documents."
    )
    llm, answer = await run_agent(tool, QUESTION)
    assert len(llm.prompts) == 2, "the agent must call the tool once, then answer"
    top = retriever.retrieve(f"input is {QUESTION}\n")[0]  # RetrieverTool's own query string for {"input": ...}
    first_line = node_text(top.node).strip().splitlines()[0]
    assert first_line in llm.prompts[1], "the retrieved passage must reach the agent's LLM as the observation"
    assert answer == first_line


async def test_query_engine_tool_output_reaches_the_agents_llm(tiny_engine: OPRM) -> None:
    query_engine = OverflowQueryEngine.from_documents(tiny_engine, tiny_documents())
    tool = QueryEngineTool.from_defaults(query_engine, name="ask_documents", description="Answers from the documents.")
    llm, answer = await run_agent(tool, QUESTION)
    expected = str(query_engine.query(QUESTION)).strip().splitlines()[0]
    assert len(llm.prompts) == 2
    assert f"Observation: {expected}" in llm.prompts[1], "the query engine's answer must reach the agent's LLM"
    assert answer == expected
