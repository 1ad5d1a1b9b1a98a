"""ChatOverflow and OverflowLLM plumbing on a tiny random model: usage, streaming, stop, per-call options, async."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage

from langchain_overflow import ChatOverflow, OverflowLLM
from overflow_core import OPRM


def _reference(engine: OPRM, text: str, **decoding: Any) -> Any:
    """What the engine itself generates for one user message (the chat model must report exactly this: a reply, so
    without leading whitespace)."""
    generation = engine.complete(engine.encode_messages([{"role": "user", "content": text}]), lstrip=True, **decoding)
    "".join(generation)
    return generation


def test_invoke_reports_text_usage_and_model_name(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=12)
    ref = _reference(engine, "Hello", max_new_tokens=12)
    msg = chat.invoke("Hello")
    assert isinstance(msg, AIMessage)
    assert msg.content == ref.text
    prompt = engine.encode_messages([{"role": "user", "content": "Hello"}])
    assert msg.usage_metadata is not None
    assert msg.usage_metadata["input_tokens"] == len(prompt)
    assert msg.usage_metadata["output_tokens"] == len(ref.token_ids)
    assert msg.usage_metadata["total_tokens"] == len(prompt) + len(ref.token_ids)
    assert chat.model == engine.name
    assert msg.response_metadata["model_name"].startswith(f"{engine.name}@"), "name@fingerprint of what was loaded"
    assert msg.response_metadata["finish_reason"] == ref.finish_reason


def test_stream_is_incremental(engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first chunk must arrive after one decoded token, not after the whole answer (a fake stream would wait)."""
    generations: list[Any] = []
    complete = engine.complete

    def recording_complete(*args: Any, **kwargs: Any) -> Any:
        generations.append(complete(*args, **kwargs))
        return generations[-1]

    monkeypatch.setattr(engine, "complete", recording_complete)
    chat = ChatOverflow(engine=engine, max_tokens=12)
    stream = chat.stream("Hello")
    first = next(stream)
    assert isinstance(first, AIMessageChunk) and first.content
    assert len(generations[0].token_ids) < 12, "the whole answer was decoded before the first chunk was yielded"
    rest = list(stream)
    monkeypatch.undo()
    full = first
    for chunk in rest:
        full = full + chunk
    assert len(rest) >= 2 and rest[-1].chunk_position == "last"
    assert full.content == chat.invoke("Hello").content
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] == len(generations[0].token_ids)
    assert full.response_metadata["model_name"] == chat.invoke("Hello").response_metadata["model_name"]


def test_stream_calls_on_llm_new_token_per_piece(engine: OPRM) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Tokens()
    chunks = [c.content for c in ChatOverflow(engine=engine).stream("Hello", config={"callbacks": [handler]})]
    assert [t for t in handler.tokens if t] == [c for c in chunks if c], "each piece once: not dropped, not doubled"


def test_stop_sequences_cut_the_output(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=16)
    text = str(chat.invoke("Hello").content)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert len(text) >= 4 and stop
    expected = text[: text.find(stop)]
    assert chat.invoke("Hello", stop=[stop]).content == expected
    assert ChatOverflow(engine=engine, max_tokens=16, stop=[stop]).invoke("Hello").content == expected
    streamed = "".join(str(c.content) for c in chat.stream("Hello", stop=[stop]))
    assert streamed == expected


def test_per_call_options_and_errors(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=12)
    short = chat.invoke("Hello", max_tokens=2)
    assert short.usage_metadata is not None and short.usage_metadata["output_tokens"] <= 2
    sampled = [chat.invoke("Hello", temperature=1.0, seed=3).content for _ in range(2)]
    assert sampled[0] == sampled[1], "a seeded sampled generation must repeat"
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['frobnicate'\\]"):
        chat.invoke("Hello", frobnicate=1)
    with pytest.raises(ValueError, match="model: this instance serves"):
        chat.invoke("Hello", model="another-model")


def test_conversations_go_through_the_chat_template(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine)
    msgs = [SystemMessage("Be brief."), HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")]
    msg = chat.invoke(msgs)
    expected = engine.encode_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "how are you"},
        ]
    )
    assert msg.usage_metadata is not None and msg.usage_metadata["input_tokens"] == len(expected)
    assert chat.get_num_tokens("hello there") == len(
        engine.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    )


async def test_async_matches_sync(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine)
    sync = chat.invoke("Hey")
    assert (await chat.ainvoke("Hey")).content == sync.content
    chunks = [c async for c in chat.astream("Hey")]
    assert "".join(str(c.content) for c in chunks) == sync.content and chunks[-1].chunk_position == "last"
    assert [m.content for m in await chat.abatch(["Hey", "Hey"])] == [sync.content, sync.content]


def test_llm_invoke_stream_generate(engine: OPRM) -> None:
    llm = OverflowLLM(engine=engine, max_tokens=10)
    prompt = "The locker number of Alice Baker is"
    text = llm.invoke(prompt)
    ref = engine.complete(engine.encode_prompt(prompt), max_new_tokens=10)
    assert text == "".join(ref)
    pieces = list(llm.stream(prompt))
    assert "".join(pieces) == text and len([p for p in pieces if p]) >= 2
    info = llm.generate([prompt]).generations[0][0].generation_info
    assert info is not None and info["model_name"].startswith(f"{engine.name}@")
    assert info["usage"]["input_tokens"] == len(engine.encode_prompt(prompt))
    assert info["usage"]["output_tokens"] == len(ref.token_ids)
    stop = text[2:4]
    assert llm.invoke(prompt, stop=[stop]) == text[: text.find(stop)]


async def test_llm_async(engine: OPRM) -> None:
    llm = OverflowLLM(engine=engine)
    text = llm.invoke("hello")
    assert await llm.ainvoke("hello") == text
    assert "".join([p async for p in llm.astream("hello")]) == text


async def test_astream_leaves_the_event_loop_free_and_can_stop_early(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=64)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    chunks = [c async for c in chat.astream("Write me 2 haikus.")]
    elapsed = time.perf_counter() - start
    task.cancel()
    assert len(chunks) > 2
    assert ticks >= min(3, int(elapsed / 0.002)), f"event loop ticked {ticks} times in {elapsed:.3f}s: it was blocked"
    async for _ in chat.astream("Write me 2 haikus."):
        break  # the producer thread stops after its current token; the next call must not be held up
    assert (await chat.ainvoke("Hey")).content == chat.invoke("Hey").content


def test_unsupported_features_say_why(engine: OPRM) -> None:
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str

    chat = ChatOverflow(engine=engine)
    with pytest.raises(NotImplementedError, match=r"does not support tool calling \(bind_tools\): OPRM models"):
        chat.bind_tools([Person])
    with pytest.raises(NotImplementedError, match=r"does not support structured output"):
        chat.with_structured_output(Person)


def test_get_num_tokens_from_messages_counts_through_the_chat_template(engine: OPRM) -> None:
    from langchain_overflow import overflow_rag_prompt

    chat = ChatOverflow(engine=engine)
    msgs = [SystemMessage("Be brief."), HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")]
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "how are you"},
    ]
    assert chat.get_num_tokens_from_messages(msgs) == len(engine.encode_messages(conversation))
    assert chat.get_num_tokens_from_messages(msgs) == chat.invoke(msgs).usage_metadata["input_tokens"]  # type: ignore[index]
    rag = overflow_rag_prompt(engine).invoke({"context": "The locker number is 4412.", "question": "What is it?"})
    expected = len(engine.encode_prompt(engine.user_message("The locker number is 4412.", "What is it?")))
    assert chat.get_num_tokens_from_messages(rag.to_messages()) == expected
