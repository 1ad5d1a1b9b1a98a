"""Outside the RAG handoff, ChatOverflow and OverflowLLM stop where the model starts writing its own prompt format again
(the engine's prompt markers, as the LlamaIndex OverflowLLM does): with the bundled model, "Hello" used to come back
as 'project Nova, as agreed.\\n</doc>\\nQuestion:'. Answers that never reach a marker are unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.documents import Document

from langchain_overflow import ChatOverflow, OverflowLLM, OverflowRetriever, create_overflow_chain
from langchain_overflow._common import prompt_markers
from overflow_core import OPRM
from tests.engines import NEEDLE, QUESTION

MARKERS = ("\n</doc>", "\nQuestion:", "\n<doc>", "<|end|>", "<|user|>", "<|assistant|>")


def _text(result: Any) -> str:
    return str(getattr(result, "content", result))


def _cut(text: str, markers: list[str]) -> str:
    """``text`` up to its first marker (what stopping there gives)."""
    ends = [text.find(m) for m in markers if m in text]
    return text[: min(ends)] if ends else text


def test_the_markers_are_the_prompt_formats_own(bundled: OPRM) -> None:
    markers = prompt_markers(bundled)
    assert set(MARKERS) <= set(markers), markers
    assert set(bundled.config.stop) <= set(markers), "the engine's own stop strings stay"


@pytest.mark.parametrize(("cls", "prompt"), [(ChatOverflow, "Hello"), (OverflowLLM, "Hello")])
def test_plain_calls_stop_at_the_prompt_markers(bundled: OPRM, cls: type, prompt: str) -> None:
    raw = _text(cls(engine=bundled, max_tokens=32, stop_at_prompt_markers=False).invoke(prompt))
    assert "\n</doc>" in raw, f"the model must run into its prompt format for this test to mean anything: {raw!r}"
    model = cls(engine=bundled, max_tokens=32)
    text = _text(model.invoke(prompt))
    assert not any(m in text for m in MARKERS), text
    assert text == _cut(raw, prompt_markers(bundled)) and text.strip(), (raw, text)
    streamed = "".join(_text(c) for c in model.stream(prompt))
    assert streamed == text
    # the opt-out works per call too
    assert _text(model.invoke(prompt, stop_at_prompt_markers=False)) == raw


def test_a_chat_reply_reports_the_stop(bundled: OPRM) -> None:
    message = ChatOverflow(engine=bundled, max_tokens=32).invoke("Hello")
    assert message.content == "project Nova, as agreed."
    assert message.response_metadata["finish_reason"] == "stop"


def test_answers_that_reach_no_marker_are_unchanged(bundled: OPRM) -> None:
    for prompt in ("What is the locker number of Alice Baker?", "Hello there, who are you?"):
        raw = _text(ChatOverflow(engine=bundled, max_tokens=24, stop_at_prompt_markers=False).invoke(prompt))
        cut = _cut(raw, prompt_markers(bundled))
        assert _text(ChatOverflow(engine=bundled, max_tokens=24).invoke(prompt)) == cut
    retriever = OverflowRetriever(engine=bundled, documents=[Document(page_content=NEEDLE)], k=1)
    for markers in (True, False):
        chat = ChatOverflow(engine=bundled, max_tokens=16, stop_at_prompt_markers=markers)
        assert create_overflow_chain(retriever, chat).invoke(QUESTION).content == "4412"


def test_user_stop_strings_still_apply(bundled: OPRM) -> None:
    chat = ChatOverflow(engine=bundled, max_tokens=32)
    assert _text(chat.invoke("Hello", stop=[", as"])) == "project Nova"
    assert _text(ChatOverflow(engine=bundled, max_tokens=32, stop=["Nova"]).invoke("Hello")) == "project "
    llm = OverflowLLM(engine=bundled, max_tokens=32)
    assert llm.invoke("Hello", stop=["lucky"]) == ", the ship Samsei's current "


def test_the_cache_key_holds_the_stop_settings(bundled: OPRM) -> None:
    """LangChain's cache key has a call's ``stop`` only: the ``stop`` field and the marker switch must be in it too."""
    cache = InMemoryCache()
    answers = [
        _text(ChatOverflow(engine=bundled, max_tokens=32, cache=cache, **kw).invoke("Hello"))
        for kw in ({}, {"stop_at_prompt_markers": False}, {"stop": ["Nova"]})
    ]
    assert answers[0] == "project Nova, as agreed." and "\n</doc>" in answers[1] and answers[2] == "project "
