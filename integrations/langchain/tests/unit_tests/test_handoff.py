"""The state handoff, the RAG chain and the agent tool, on a tiny random model (plumbing; content is in test_bundled.py).

A random model's answers mean nothing, but greedy decoding is deterministic, so "continues from the retriever's state"
and "equals a from-scratch run" can be checked token for token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnablePassthrough
from langchain_core.tools import create_retriever_tool

from langchain_overflow import (
    ChatOverflow,
    OverflowLLM,
    OverflowRetriever,
    format_docs_for,
    overflow_prompt,
    overflow_rag_prompt,
)
from overflow_core import OPRM
from tests.engines import QUESTION, tiny_corpus


@contextmanager
def count_forward_tokens(engine: OPRM) -> Iterator[list[int]]:
    """The number of input ids of every forward call of the Hugging Face model inside the block."""
    calls: list[int] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        calls.append(int(kwargs["input_ids"].shape[-1]))

    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture
def retriever(engine: OPRM) -> OverflowRetriever:
    docs = [Document(page_content=text, metadata=meta) for text, meta in tiny_corpus()]
    return OverflowRetriever(engine=engine, documents=docs, k=2)


def test_chat_model_continues_from_the_retrievers_state(engine: OPRM, retriever: OverflowRetriever) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=8)
    chain = {"context": retriever, "question": RunnablePassthrough()} | overflow_rag_prompt(engine) | chat
    engine.state_cache.clear()
    with count_forward_tokens(engine) as during_retrieval:
        top = retriever.invoke(QUESTION)[0]
    prompt = engine.encode_prompt(overflow_prompt(engine, [top], QUESTION))
    assert max(during_retrieval) >= len(prompt), "the retriever prefilled the chunk prompts"

    engine.state_cache.clear()
    with count_forward_tokens(engine) as calls:
        msg = chain.invoke(QUESTION)
    assert calls[: len(during_retrieval)] == during_retrieval, "the chain ran the retriever's prefill first"
    decode_calls = calls[len(during_retrieval) :]
    assert all(n == 1 for n in decode_calls), f"after the retriever the chat model fed only new tokens: {decode_calls}"
    assert msg.response_metadata["prompt_forward_tokens"] == 0
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == len(prompt)
    assert msg.usage_metadata["input_token_details"]["cache_read"] == len(prompt)
    assert len(decode_calls) <= msg.usage_metadata["output_tokens"]

    engine.state_cache.clear()  # from scratch: the same prompt, prefilled alone
    with count_forward_tokens(engine) as scratch_calls:
        scratch = chat.invoke(overflow_rag_prompt(engine).invoke({"context": [top], "question": QUESTION}))
    assert scratch.response_metadata["prompt_forward_tokens"] == len(prompt)
    assert scratch_calls[0] == len(prompt)
    assert scratch.content == msg.content
    assert engine.answer(QUESTION, tiny_corpus()).text == str(msg.content).strip()


def test_llm_chain_hands_off_too(engine: OPRM, retriever: OverflowRetriever) -> None:
    llm = OverflowLLM(engine=engine)
    chain = {"context": retriever, "question": RunnablePassthrough()} | format_docs_for(engine) | llm
    engine.state_cache.clear()
    inputs = chain.first.invoke(QUESTION)  # {"context": the retriever's Documents, "question": ...}
    result = llm.generate([format_docs_for(engine).invoke(inputs)]).generations[0][0]
    assert result.generation_info is not None and result.generation_info["prompt_forward_tokens"] == 0
    assert chain.invoke(QUESTION) == result.text
    assert result.text == ChatOverflow(engine=engine).invoke(overflow_rag_prompt(engine).invoke(inputs)).content


def test_streamed_chain_matches_invoked_chain(engine: OPRM, retriever: OverflowRetriever) -> None:
    chain = (
        {"context": retriever, "question": RunnablePassthrough()}
        | overflow_rag_prompt(engine)
        | ChatOverflow(engine=engine)
        | StrOutputParser()
    )
    pieces = list(chain.stream(QUESTION))
    assert len(pieces) > 1 and "".join(pieces) == chain.invoke(QUESTION)


def test_retriever_tool_returns_scores_as_artifact(engine: OPRM, retriever: OverflowRetriever) -> None:
    tool = create_retriever_tool(
        retriever, "search_documents", "Search the documents.", response_format="content_and_artifact"
    )
    call = {"type": "tool_call", "name": "search_documents", "args": {"query": QUESTION}, "id": "call-1"}
    message = tool.invoke(call)
    assert isinstance(message, ToolMessage) and message.tool_call_id == "call-1"
    docs = message.artifact
    assert [d.page_content for d in docs] == [d.page_content for d in retriever.invoke(QUESTION)]
    assert all({"score", "entropy", "rank", "not_found", "start", "end"} <= set(d.metadata["overflow"]) for d in docs)
    assert all("source" in d.metadata for d in docs)
    assert docs[0].page_content in message.content


def test_prompt_helpers(engine: OPRM) -> None:
    top = Document(page_content="The locker number of Alice Baker is 4412.")
    expected = engine.user_message(top.page_content, QUESTION)
    assert overflow_prompt(engine, [top, Document(page_content="other")], QUESTION) == expected
    assert overflow_prompt(engine, top, QUESTION) == overflow_prompt(engine, top.page_content, QUESTION) == expected
    value = overflow_rag_prompt(engine).invoke({"context": [top], "question": QUESTION})
    [message] = value.to_messages()
    assert message.type == "human" and top.page_content in message.text and QUESTION in message.text
    specials = [t for t in engine.tokenizer.all_special_tokens if t in message.text]
    assert not specials, f"the human message carries the chat template's own tokens: {specials}"
    assert ChatOverflow(engine=engine)._prompt_ids([message]) == engine.encode_prompt(expected), (
        "the chat model must map the message to exactly the ids the engine scored"
    )
    assert format_docs_for(engine).invoke({"context": [top], "question": QUESTION}) == expected
    with pytest.raises(ValueError, match="context: expected at least one Document"):
        overflow_prompt(engine, [], QUESTION)
