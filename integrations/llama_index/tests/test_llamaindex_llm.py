"""OverflowLLM plumbing on a tiny random model: metadata, the four call styles and their async twins, the QA template,
and the state handoff from a retriever on the same engine."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.llms.overflow import DEFAULT_CONTEXT_WINDOW, OverflowLLM, overflow_qa_template
from llama_index.retrievers.overflow import OverflowRetriever, node_text
from llamaindex_data import QUESTION, tiny_documents

from overflow_core import OPRM

CHUNK = "As of this year, the ship Dune has RWZ 511 as license plate. Laura went to the park."


def test_metadata_tells_llama_index_the_window_it_may_pack(tiny_engine: OPRM) -> None:
    """A recurrent model has no hard context limit and a packed context is answered chunk by chunk (OPRM), so the window
    is large and configurable; at 8650456 it was one chunk's prompt (133 + 8 tokens here, 573 for the bundled model),
    which made LlamaIndex's synthesizers fail with "Chunk size ... is not positive"."""
    cfg = tiny_engine.config
    meta = OverflowLLM(tiny_engine).metadata
    assert meta.context_window == DEFAULT_CONTEXT_WINDOW >= 32768
    assert meta.num_output == cfg.max_new_tokens
    assert meta.model_name == tiny_engine.name
    assert not meta.is_chat_model
    assert OverflowLLM(tiny_engine, max_new_tokens=3).metadata.num_output == 3
    assert OverflowLLM(tiny_engine, context_window=4096).metadata.context_window == 4096
    with pytest.raises(ValueError, match="context_window"):
        OverflowLLM(tiny_engine, context_window=0)


def test_qa_template_renders_the_engines_prompt(tiny_engine: OPRM) -> None:
    template = overflow_qa_template(tiny_engine)
    rendered = template.format(context_str=CHUNK, query_str=f"  {QUESTION}\n")
    assert rendered == tiny_engine.user_message(CHUNK, QUESTION)
    assert tiny_engine.encode_prompt(rendered) == tiny_engine.prompt(
        tiny_engine.tokenizer(CHUNK, add_special_tokens=False)["input_ids"],
        tiny_engine.tokenizer(QUESTION, add_special_tokens=False)["input_ids"],
    )


def test_complete_stream_and_chat_agree(tiny_engine: OPRM) -> None:
    llm = OverflowLLM(tiny_engine)
    prompt = tiny_engine.user_message(CHUNK, QUESTION)
    done = llm.complete(prompt, formatted=True)
    expected = tiny_engine.complete(tiny_engine.encode_prompt(prompt))
    assert done.text == "".join(expected)
    assert done.additional_kwargs["generated_tokens"] == len(expected.token_ids)
    assert done.additional_kwargs["finish_reason"] in ("stop", "length")

    pieces = list(llm.stream_complete(prompt, formatted=True))
    assert "".join(p.delta or "" for p in pieces) == done.text
    assert pieces[-1].text == done.text
    assert pieces[-1].additional_kwargs["generated_tokens"] == len(expected.token_ids)

    message = ChatMessage(role=MessageRole.USER, content=prompt)  # one user message holding the engine's prompt
    chat = llm.chat([message])
    assert chat.message.role == MessageRole.ASSISTANT
    assert chat.message.content == done.text
    streamed = list(llm.stream_chat([message]))
    assert "".join(r.delta or "" for r in streamed) == done.text


def test_chat_with_system_and_several_turns_goes_through_the_chat_template(tiny_engine: OPRM) -> None:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
        ChatMessage(role=MessageRole.USER, content="Hello"),
    ]
    reply = OverflowLLM(tiny_engine).chat(messages)
    ids = tiny_engine.encode_messages([{"role": m.role.value, "content": m.content or ""} for m in messages])
    assert reply.message.content == "".join(tiny_engine.complete(ids, lstrip=True)), "a chat reply, without leading space"


def test_decoding_options_pass_through_and_unknown_ones_fail(tiny_engine: OPRM) -> None:
    llm = OverflowLLM(tiny_engine)
    assert llm.complete("Laura went", max_new_tokens=2).additional_kwargs["generated_tokens"] <= 2
    assert OverflowLLM(tiny_engine, max_new_tokens=1).complete("Laura went").additional_kwargs["generated_tokens"] <= 1
    sampled = [llm.complete("Laura went", temperature=1.0, seed=s).text for s in (1, 1)]
    assert sampled[0] == sampled[1], "the same seed must give the same sample"
    with pytest.raises(Exception, match="unknown decoding option"):
        llm.complete("Laura went", beams=4)


async def test_async_variants_match_sync(tiny_engine: OPRM) -> None:
    llm = OverflowLLM(tiny_engine)
    prompt = tiny_engine.user_message(CHUNK, QUESTION)
    text = llm.complete(prompt).text
    assert (await llm.acomplete(prompt)).text == text
    assert "".join([r.delta or "" async for r in await llm.astream_complete(prompt)]) == text
    message = ChatMessage(role=MessageRole.USER, content=prompt)
    assert (await llm.achat([message])).message.content == text
    assert "".join([r.delta or "" async for r in await llm.astream_chat([message])]) == text


@pytest.mark.parametrize("use_state_index", [False, True], ids=["prefill", "state-index"])
def test_llm_continues_from_the_retrievers_cached_state(
    tiny_engine: OPRM, spy_complete: Any, use_state_index: bool
) -> None:
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=2, use_state_index=use_state_index)
    generations = spy_complete(tiny_engine)
    llm = OverflowLLM(tiny_engine)
    top = retriever.retrieve(QUESTION)
    prompt = overflow_qa_template(tiny_engine).format(context_str=node_text(top[0].node), query_str=QUESTION)
    handed_off = llm.complete(prompt, formatted=True)
    assert handed_off.additional_kwargs["prompt_forward_tokens"] == 0, "the prompt was run through the model again"
    assert handed_off.additional_kwargs["reused_tokens"] == len(tiny_engine.encode_prompt(prompt))
    second = llm.complete(
        overflow_qa_template(tiny_engine).format(context_str=node_text(top[1].node), query_str=QUESTION)
    )
    assert second.additional_kwargs["prompt_forward_tokens"] == 0, "every one of the top-k states is cached"

    tiny_engine.state_cache.clear()
    scratch = llm.complete(prompt, formatted=True)
    assert scratch.additional_kwargs["prompt_forward_tokens"] == len(tiny_engine.encode_prompt(prompt))
    if not use_state_index:  # (the index's states equal a full prefill within float tolerance: core tests check that)
        assert scratch.text == handed_off.text, "decoding from the cached state must equal decoding from scratch"
    assert [g.prompt_forward_tokens for g in generations] == [0, 0, len(tiny_engine.encode_prompt(prompt))]
