"""Content, with the bundled trained model: the right node ranks first, the answer is right, the LLM continues from the
retriever's state (no prompt token runs twice) and says the same as a from-scratch run, "not found" when the documents do
not tell, and an agent gets the answer through a tool. Skipped, saying why, while the model is not installed."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import SummaryIndex
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import BaseNode
from llama_index.core.tools import QueryEngineTool
from llama_index.llms.overflow import OverflowLLM, overflow_qa_template
from llama_index.postprocessor.overflow import OverflowRerank
from llama_index.query_engine.overflow import NOT_FOUND_ANSWER, OverflowQueryEngine
from llama_index.retrievers.overflow import IDK_KEY, OverflowRetriever, node_text, sentence_splitter
from llamaindex_data import ABSENT_QUESTION, ANSWER, FACT, QUESTION, long_documents, run_agent

from overflow_core import OPRM


def parsed_nodes(engine: OPRM) -> list[BaseNode]:
    nodes = sentence_splitter(engine).get_nodes_from_documents(long_documents())
    assert len(nodes) >= 6, f"the fixture should span several chunks, got {len(nodes)} nodes"
    return nodes


def test_the_node_holding_the_fact_ranks_first(bundled: OPRM) -> None:
    hits = OverflowRetriever(bundled, parsed_nodes(bundled), similarity_top_k=3).retrieve(QUESTION)
    assert FACT in node_text(hits[0].node), (
        f"expected the node with the fact first, got {node_text(hits[0].node)[:200]!r}"
    )
    assert hits[0].node.metadata[IDK_KEY] is False
    assert hits[0].node.metadata["file_name"] == "report1.txt"


def test_retriever_query_engine_answers_from_the_cached_state(bundled: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(bundled)
    nodes = parsed_nodes(bundled)
    llm = OverflowLLM(bundled)
    query_engine = RetrieverQueryEngine.from_args(OverflowRetriever(bundled, nodes, similarity_top_k=1), llm=llm)
    response = query_engine.query(QUESTION)
    assert str(response).strip() == ANSWER
    assert FACT in node_text(response.source_nodes[0].node)
    assert [g.prompt_forward_tokens for g in generations] == [0], "the LLM re-read the prompt the retriever had run"

    bundled.state_cache.clear()  # the same prompt from scratch gives the same answer
    prompt = overflow_qa_template(bundled).format(
        context_str=node_text(response.source_nodes[0].node), query_str=QUESTION
    )
    scratch = llm.complete(prompt, formatted=True)
    assert scratch.additional_kwargs["prompt_forward_tokens"] == len(bundled.encode_prompt(prompt))
    assert scratch.text.strip() == str(response).strip()
    assert bundled.answer(QUESTION, [node_text(n) for n in nodes]).text == ANSWER


def test_overflow_query_engine_over_long_documents(bundled: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(bundled)
    query_engine = OverflowQueryEngine.from_documents(bundled, long_documents(), similarity_top_k=3)
    response = query_engine.query(QUESTION)
    assert str(response) == ANSWER
    assert response.metadata is not None and response.metadata["not_found"] is False
    assert response.metadata["prompt_forward_tokens"] == 0
    assert [g.prompt_forward_tokens for g in generations] == [0]
    assert FACT in node_text(response.source_nodes[0].node)


def test_not_found_when_no_document_tells(bundled: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(bundled)
    without_fact = [d for d in long_documents() if FACT not in d.text]
    response = OverflowQueryEngine.from_documents(bundled, without_fact).query(QUESTION)
    assert str(response) == NOT_FOUND_ANSWER
    assert response.metadata is not None and response.metadata["not_found"] is True
    # every chunk abstained (the LLM was not asked), or the best chunk's answer was the not-found phrase
    assert all(n.node.metadata[IDK_KEY] for n in response.source_nodes) or len(generations) == 1


@pytest.mark.xfail(
    strict=False,
    reason="model quality, not the adapter: the bundled model (1600 steps) answers a question about another person's "
    "locker number with the value of the one fact in the chunk instead of abstaining (hard negatives)",
)
def test_not_found_for_a_similar_question_the_documents_do_not_answer(bundled: OPRM) -> None:
    response = OverflowQueryEngine.from_documents(bundled, long_documents()).query(ABSENT_QUESTION)
    assert str(response) == NOT_FOUND_ANSWER


def test_rerank_of_another_retrievers_nodes_in_a_query_engine(bundled: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(bundled)
    query_engine = RetrieverQueryEngine.from_args(
        SummaryIndex(parsed_nodes(bundled)).as_retriever(),  # every node, in document order
        llm=OverflowLLM(bundled),
        node_postprocessors=[OverflowRerank(bundled, top_n=1)],
    )
    response = query_engine.query(QUESTION)
    assert str(response).strip() == ANSWER
    assert FACT in node_text(response.source_nodes[0].node)
    assert [g.prompt_forward_tokens for g in generations] == [0]


async def test_async_query(bundled: OPRM) -> None:
    response = await OverflowQueryEngine.from_documents(bundled, long_documents()).aquery(QUESTION)
    assert str(response) == ANSWER


async def test_an_agent_gets_the_answer_through_the_query_engine_tool(bundled: OPRM) -> None:
    query_engine = OverflowQueryEngine.from_documents(bundled, long_documents())
    tool = QueryEngineTool.from_defaults(query_engine, name="ask_reports", description="Answers from the reports.")
    llm, answer = await run_agent(tool, QUESTION)
    assert f"Observation: {ANSWER}" in llm.prompts[1], "the tool's answer must reach the agent's LLM"
    assert answer == ANSWER
