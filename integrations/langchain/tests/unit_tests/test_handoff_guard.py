"""A handoff that holds by construction (create_overflow_chain: no prompt token runs twice, counted) and, elsewhere, a
warning (or an error with strict_handoff=True) when a call that could have continued the retriever's state did not.

On a tiny random model: what is checked is which tokens go through the model, not what the answers say.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from langchain_overflow import ChatOverflow, OverflowLLM, OverflowRetriever, format_docs_for, overflow_rag_prompt
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


@contextmanager
def no_handoff_warning() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    handoff = [str(w.message) for w in caught if "no state handoff" in str(w.message)]
    assert not handoff, handoff


@pytest.fixture
def docs() -> list[Document]:
    return [Document(page_content=text, metadata=meta) for text, meta in tiny_corpus()]


@pytest.fixture
def retriever(engine: OPRM, docs: list[Document]) -> OverflowRetriever:
    return OverflowRetriever(engine=engine, documents=docs, k=2)


def _retrieval_calls(engine: OPRM, retriever: OverflowRetriever) -> list[int]:
    engine.state_cache.clear()
    with count_forward_tokens(engine) as calls:
        retriever.invoke(QUESTION)
    return calls


def test_create_overflow_chain_runs_no_prompt_token_twice(engine: OPRM, retriever: OverflowRetriever) -> None:
    from langchain_overflow import create_overflow_chain

    retrieval = _retrieval_calls(engine, retriever)
    chain = create_overflow_chain(retriever, ChatOverflow(engine=engine, max_tokens=8))
    engine.state_cache.clear()
    with count_forward_tokens(engine) as calls, no_handoff_warning():
        message = chain.invoke(QUESTION)
    assert isinstance(message, AIMessage)
    assert calls[: len(retrieval)] == retrieval, "the chain ran the retriever's batched prefill first"
    decode = calls[len(retrieval) :]
    assert decode and all(n == 1 for n in decode), f"after the retriever the chat model fed only new tokens: {decode}"
    assert message.response_metadata["prompt_forward_tokens"] == 0
    usage = message.usage_metadata
    assert usage is not None and usage["input_token_details"]["cache_read"] == usage["input_tokens"] > 0

    manual = (
        {"context": retriever, "question": RunnablePassthrough()}
        | overflow_rag_prompt(engine)
        | ChatOverflow(engine=engine, max_tokens=8)
    )
    assert manual.invoke(QUESTION).content == message.content
    assert (chain | StrOutputParser()).invoke({"question": QUESTION}) == message.content
    assert "".join(str(c.content) for c in chain.stream(QUESTION)) == message.content


async def test_create_overflow_chain_async_and_with_context(engine: OPRM, retriever: OverflowRetriever) -> None:
    from langchain_overflow import create_overflow_chain

    chain = create_overflow_chain(retriever, return_context=True)
    out = await chain.ainvoke({"input": QUESTION})
    assert set(out) == {"question", "context", "answer"} and out["question"] == QUESTION
    assert [d.page_content for d in out["context"]] == [d.page_content for d in retriever.invoke(QUESTION)]
    assert out["answer"].response_metadata["prompt_forward_tokens"] == 0


def test_create_overflow_chain_refuses_a_model_on_another_engine(engine: OPRM, retriever: OverflowRetriever) -> None:
    from langchain_overflow import create_overflow_chain

    other = OPRM(engine.model, engine.tokenizer, engine.config)
    with pytest.raises(ValueError, match="model: expected a ChatOverflow on the retriever's engine"):
        create_overflow_chain(retriever, ChatOverflow(engine=other))


def test_with_k_above_one_the_answer_comes_from_the_best_chunk(engine: OPRM, docs: list[Document]) -> None:
    """k > 1: the prompt holds the best chunk only; the answer is the one k=1 gives, and still continues the state."""
    from langchain_overflow import create_overflow_chain

    wide = create_overflow_chain(OverflowRetriever(engine=engine, documents=docs, k=4), return_context=True)
    narrow = create_overflow_chain(OverflowRetriever(engine=engine, documents=docs, k=1), return_context=True)
    out_wide, out_narrow = wide.invoke(QUESTION), narrow.invoke(QUESTION)
    assert len(out_wide["context"]) == 4 and len(out_narrow["context"]) == 1
    assert out_wide["context"][0].page_content == out_narrow["context"][0].page_content
    assert out_wide["answer"].content == out_narrow["answer"].content
    assert out_wide["answer"].response_metadata["prompt_forward_tokens"] == 0


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("chat_prompt_template", "in other words than the engine's prompt"),
        ("system_message", "a system message or earlier turns"),
        ("llm_fed_chat_prompt", "OverflowLLM got a chat prompt rendered as text"),
    ],
)
def test_a_call_that_could_have_reused_the_state_warns(
    engine: OPRM, retriever: OverflowRetriever, case: str, cause: str
) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=4)
    if case == "chat_prompt_template":
        prompt = ChatPromptTemplate.from_messages([("human", "Context:\n{context}\n\nQuestion: {question}")])
        chain: Any = {"context": retriever, "question": RunnablePassthrough()} | prompt | chat
    elif case == "system_message":
        rag = overflow_rag_prompt(engine)

        def with_system(inputs: dict[str, Any]) -> list[Any]:
            return [SystemMessage("Answer briefly."), *rag.invoke(inputs).to_messages()]

        chain = {"context": retriever, "question": RunnablePassthrough()} | RunnableLambda(with_system) | chat
    else:
        chain = (
            {"context": retriever, "question": RunnablePassthrough()}
            | overflow_rag_prompt(engine)
            | OverflowLLM(engine=engine, max_tokens=4)
        )
    with pytest.warns(UserWarning, match=f"no state handoff, the whole prompt was run again: .*{cause}"):
        chain.invoke(QUESTION)


def test_a_second_engine_of_the_same_folder_warns(engine: OPRM, retriever: OverflowRetriever) -> None:
    second = OPRM.from_pretrained(engine.model.config._name_or_path)
    chain = (
        {"context": retriever, "question": RunnablePassthrough()}
        | overflow_rag_prompt(engine)
        | ChatOverflow(engine=second, max_tokens=4)
    )
    with pytest.warns(UserWarning, match="the retriever ran on another engine of the same model"):
        message = chain.invoke(QUESTION)
    assert message.response_metadata["prompt_forward_tokens"] > 0


def test_an_evicted_state_warns_and_strict_handoff_raises(engine: OPRM, docs: list[Document]) -> None:
    from langchain_overflow import HandoffError, create_overflow_chain

    no_cache = OPRM(engine.model, engine.tokenizer, engine.config.with_overrides(state_cache_bytes=0))
    retriever = OverflowRetriever(engine=no_cache, documents=docs, k=1)
    with pytest.warns(UserWarning, match=r"no longer in the engine's state cache .*state_cache_bytes=0"):
        create_overflow_chain(retriever).invoke(QUESTION)
    strict = create_overflow_chain(retriever, ChatOverflow(engine=no_cache, strict_handoff=True))
    with pytest.raises(HandoffError, match="no state handoff"):
        strict.invoke(QUESTION)


def test_no_warning_without_a_missed_reuse(engine: OPRM, retriever: OverflowRetriever) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=4)
    llm = OverflowLLM(engine=engine, max_tokens=4)
    with no_handoff_warning():
        retriever.invoke(QUESTION)
        chat.invoke("Hello")  # unrelated to the retrieval
        chat.invoke([SystemMessage("Be brief."), HumanMessage("What is 2 + 2?")])
        ({"context": retriever, "question": RunnablePassthrough()} | format_docs_for(engine) | llm).invoke(QUESTION)
        ({"context": retriever, "question": RunnablePassthrough()} | overflow_rag_prompt(engine) | chat).invoke(
            QUESTION
        )


def test_the_handoff_holds_without_a_chat_template_too(engine: OPRM, docs: list[Document]) -> None:
    """A tokenizer without a chat template: the engine's prompt is a plain instruction template, and the human message
    is that whole prompt (no template markers to strip); the chain still runs no prompt token twice."""
    import copy

    from langchain_overflow import create_overflow_chain

    tokenizer = copy.deepcopy(engine.tokenizer)
    tokenizer.chat_template = None
    plain = OPRM(engine.model, tokenizer, engine.config)
    assert plain.template.prefix.startswith("Instruction:"), plain.template
    retriever = OverflowRetriever(engine=plain, documents=docs, k=2)
    message = overflow_rag_prompt(plain).invoke({"context": retriever.invoke(QUESTION), "question": QUESTION})
    assert message.to_messages()[0].text == plain.user_message(retriever.invoke(QUESTION)[0].page_content, QUESTION)
    with no_handoff_warning():
        answer = create_overflow_chain(retriever, ChatOverflow(engine=plain, max_tokens=4)).invoke(QUESTION)
    assert answer.response_metadata["prompt_forward_tokens"] == 0
