"""Content tests with the bundled trained model: the right chunk first, ordered scores, correct chain answers, the
state handoff, the agent tool and the reranker. They skip when overflow_core/models/default is not installed.

Fixture: four documents of filler prose (one 256-token chunk each); only ``needle.txt`` says "The locker number of
Alice Baker is 4412.", and ``filler2.txt`` holds a near miss (Alice Barker's badge number).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.tools import create_retriever_tool

from langchain_overflow import ChatOverflow, OverflowReranker, OverflowRetriever, overflow_rag_prompt
from overflow_core import OPRM
from tests.engines import NEEDLE, QUESTION, needle_corpus

# The abstain path end to end: a question no document answers (another person, another attribute) must come out as
# "not found". Hard negatives (the needle's attribute for another person) are the training evaluation's business; the
# 1600-step checkpoint still answers "4412" to "What is the locker number of Bruno Stone?".
ABSENT = "What is the hometown of Carl Young?"


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [Document(page_content=text, metadata=meta) for text, meta in needle_corpus()]


@pytest.fixture(scope="module")
def retriever(bundled: OPRM, docs: list[Document]) -> OverflowRetriever:
    return OverflowRetriever(engine=bundled, documents=docs, k=4)


@pytest.fixture(scope="module")
def chain(bundled: OPRM, retriever: OverflowRetriever) -> Runnable[str, str]:
    return (
        {"context": retriever, "question": RunnablePassthrough()}
        | overflow_rag_prompt(bundled)
        | ChatOverflow(engine=bundled, max_tokens=16)
        | StrOutputParser()
    )


@contextmanager
def count_forward_tokens(engine: OPRM) -> Iterator[list[int]]:
    calls: list[int] = []
    handle = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(int(kwargs["input_ids"].shape[-1])), with_kwargs=True
    )
    try:
        yield calls
    finally:
        handle.remove()


def test_the_chunk_with_the_answer_comes_first(retriever: OverflowRetriever) -> None:
    out = retriever.invoke(QUESTION)
    assert len(out) == 4
    top = out[0]
    assert top.metadata["source"] == "needle.txt" and NEEDLE in top.page_content, [d.metadata for d in out]
    assert top.metadata["overflow"]["not_found"] is False and top.metadata["overflow"]["rank"] == 0
    assert top.metadata["kind"] == "fixture", "source metadata is kept"
    answering = [d for d in out if not d.metadata["overflow"]["not_found"]]
    abstaining = [d for d in out if d.metadata["overflow"]["not_found"]]
    assert out == answering + abstaining, "abstaining chunks rank after every answering chunk"
    for group in (answering, abstaining):
        scores = [d.metadata["overflow"]["score"] for d in group]
        assert scores == sorted(scores, reverse=True), "within each group, higher score ranks first"


def test_the_chain_answers_correctly(chain: Runnable[str, str]) -> None:
    assert chain.invoke(QUESTION).strip() == "4412"


def test_the_chain_says_not_found_when_the_fact_is_absent(chain: Runnable[str, str]) -> None:
    assert chain.invoke(ABSENT).strip().lower().startswith("not found")


def test_state_handoff_feeds_only_new_tokens_and_matches_a_from_scratch_run(
    bundled: OPRM, retriever: OverflowRetriever, docs: list[Document]
) -> None:
    chat = ChatOverflow(engine=bundled, max_tokens=16)
    prompt = overflow_rag_prompt(bundled)
    bundled.state_cache.clear()
    with count_forward_tokens(bundled) as retrieval_calls:
        top = retriever.invoke(QUESTION)
    with count_forward_tokens(bundled) as chat_calls:
        handed_off = chat.invoke(prompt.invoke({"context": top, "question": QUESTION}))
    usage = handed_off.usage_metadata
    assert usage is not None
    prompt_tokens = usage["input_tokens"]
    assert max(retrieval_calls) >= prompt_tokens, "the retriever prefilled the chunk prompts"
    assert handed_off.response_metadata["prompt_forward_tokens"] == 0
    assert usage["input_token_details"]["cache_read"] == prompt_tokens
    assert all(n == 1 for n in chat_calls), f"the chat model fed only generated tokens, one at a time: {chat_calls}"
    assert len(chat_calls) <= usage["output_tokens"]

    bundled.state_cache.clear()  # from scratch: the same prompt, prefilled alone
    with count_forward_tokens(bundled) as scratch_calls:
        scratch = chat.invoke(prompt.invoke({"context": top, "question": QUESTION}))
    assert scratch.response_metadata["prompt_forward_tokens"] == prompt_tokens == scratch_calls[0]
    assert scratch.content == handed_off.content
    answer = bundled.answer(QUESTION, [(d.page_content, d.metadata) for d in docs], max_new_tokens=16)
    assert answer.text == str(handed_off.content).strip() == "4412"


def test_retriever_tool_artifact_keeps_the_scores(retriever: OverflowRetriever) -> None:
    tool = create_retriever_tool(
        retriever,
        "search_records",
        "Search the records for facts about people.",
        response_format="content_and_artifact",
    )
    message = tool.invoke({"type": "tool_call", "name": "search_records", "args": {"query": QUESTION}, "id": "1"})
    assert NEEDLE in message.content
    assert message.artifact[0].metadata["source"] == "needle.txt"
    assert message.artifact[0].metadata["overflow"]["score"] == max(
        d.metadata["overflow"]["score"] for d in message.artifact if not d.metadata["overflow"]["not_found"]
    )


def test_reranker_puts_the_answering_sentence_first(bundled: OPRM, docs: list[Document]) -> None:
    candidates: list[Any] = []
    for doc in docs:
        for i, sentence in enumerate(doc.page_content.split(". ")):
            candidates.append(Document(page_content=sentence, metadata={**doc.metadata, "sentence": i}))
    out = OverflowReranker(engine=bundled, top_n=3).compress_documents(candidates, QUESTION)
    assert "Alice Baker is 4412" in out[0].page_content and out[0].metadata["source"] == "needle.txt"
    assert out[0].metadata["overflow"]["not_found"] is False
