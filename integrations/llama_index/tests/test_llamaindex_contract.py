"""The integration's contract with LlamaIndex, on a tiny random model: packed prompts answered with OPRM, the refine and
condense policies, stop strings, from_pretrained and one shared engine, unknown keywords, node hygiene (empty nodes,
whole nodes, retrieval scores), agent tools scoring the real question, streaming, and instrumentation events.

Each failure listed in issue #25's "Why" has a test here or in test_llamaindex_paths.py that fails on the code at
8650456 (named in the test's docstring)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.chat_engine.condense_question import DEFAULT_PROMPT as CONDENSE_PROMPT
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.prompts.default_prompts import DEFAULT_REFINE_PROMPT, DEFAULT_TEXT_QA_PROMPT
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import RetrieverTool
from llama_index.llms.overflow import OverflowLLM, prompt_markers
from llama_index.postprocessor.overflow import OverflowRerank
from llama_index.query_engine.overflow import NOT_FOUND_ANSWER, OverflowQueryEngine
from llama_index.retrievers.overflow import (
    ENTROPY_KEY,
    RETRIEVAL_SCORE_KEY,
    SCORE_KEYS,
    OverflowRetriever,
    node_text,
)
from llamaindex_data import QUESTION, tiny_documents

from overflow_core import OPRM
from overflow_core.testing import sample_documents

LONG = "\n\n".join(text for text, _ in sample_documents())  # several of the tiny model's 48-token chunks


# -- packed prompts -------------------------------------------------------------------------------------------------------
def test_a_packed_context_is_answered_with_oprm_over_it(tiny_engine: OPRM) -> None:
    """LlamaIndex's text QA template with a context of several chunks: the answer is the engine's OPRM answer over that
    context (at 8650456 the model read LlamaIndex's whole packed prompt as one sequence, after a synthesizer had cut
    the nodes to fit a 141-token window)."""
    assert len(tiny_engine.chunk([LONG])) > 3
    llm = OverflowLLM(tiny_engine)
    expected = tiny_engine.answer(QUESTION, [LONG])
    got = llm.predict(DEFAULT_TEXT_QA_PROMPT, context_str=LONG, query_str=QUESTION)
    assert got == expected.text
    whole = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=LONG, query_str=QUESTION)).text
    assert whole != got, "the whole packed prompt read as one sequence gives another answer: the routing matters"
    as_is = OverflowLLM(tiny_engine, context_mode="prompt").predict(
        DEFAULT_TEXT_QA_PROMPT, context_str=LONG, query_str=QUESTION
    )
    assert as_is == whole, "context_mode='prompt' reads LlamaIndex's prompt as formatted"


def test_a_one_chunk_context_continues_the_retrievers_state(tiny_engine: OPRM, spy_complete: Any) -> None:
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=1)
    best = node_text(retriever.retrieve(QUESTION)[0].node)
    generations = spy_complete(tiny_engine)
    text = OverflowLLM(tiny_engine).predict(DEFAULT_TEXT_QA_PROMPT, context_str=best, query_str=QUESTION)
    assert [g.prompt_forward_tokens for g in generations] == [0], "the scored prompt's state was not reused"
    tiny_engine.state_cache.clear()
    assert text == "".join(tiny_engine.complete(tiny_engine.encode_prompt(tiny_engine.user_message(best, QUESTION))))


def test_refine_keeps_an_answer_and_replaces_not_found(tiny_engine: OPRM, spy_complete: Any) -> None:
    llm = OverflowLLM(tiny_engine)
    generations = spy_complete(tiny_engine)
    kept = llm.predict(DEFAULT_REFINE_PROMPT, context_msg=LONG, query_str=QUESTION, existing_answer="4412")
    assert kept == "4412" and generations == [], "an answer from a higher-ranked node is kept without a model call"
    short = sample_documents()[0][0][:150]
    replaced = llm.predict(DEFAULT_REFINE_PROMPT, context_msg=short, query_str=QUESTION, existing_answer="not found")
    fresh = llm.predict(DEFAULT_TEXT_QA_PROMPT, context_str=short, query_str=QUESTION)
    assert replaced == (fresh if not fresh.strip().lower().startswith("not found") else "not found")


def test_condense_prompts_keep_the_follow_up_unless_asked(tiny_engine: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(tiny_engine)
    history = "user: Who is Alice Baker?\nassistant: A colleague."
    kept = OverflowLLM(tiny_engine).predict(CONDENSE_PROMPT, question=QUESTION, chat_history=history)
    assert kept == QUESTION and generations == []
    OverflowLLM(tiny_engine, condense_questions=True).predict(CONDENSE_PROMPT, question=QUESTION, chat_history=history)
    assert len(generations) == 1, "condense_questions=True lets the model rewrite the question"


def test_default_stop_strings_are_the_prompt_formats_markers(tiny_engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    template = tiny_engine.template
    markers = prompt_markers(tiny_engine)
    for line in (template.prefix + template.infix + template.suffix).splitlines():
        head = line.split(":")[0]
        if line.strip() and ":" in line and head.strip()[:1].isupper() and len(head) <= 30:
            assert f"\n{head.strip()}:" in markers, (line, markers)
    assert markers, f"the template {template!r} has markers"
    seen: list[Any] = []
    original = tiny_engine.complete

    def complete(ids: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("stop"))
        return original(ids, **kwargs)

    monkeypatch.setattr(tiny_engine, "complete", complete)
    OverflowLLM(tiny_engine).complete("Laura went")
    OverflowLLM(tiny_engine, stop=["."]).complete("Laura went")
    assert seen == [tuple(markers), (".",)]


# -- constructors and keywords --------------------------------------------------------------------------------------------
def test_from_pretrained_shares_one_engine_and_passes_settings(tiny_model_dir: Path) -> None:
    llm = OverflowLLM.from_pretrained(tiny_model_dir, max_new_tokens=3, chunk_tokens=40)
    retriever = OverflowRetriever.from_pretrained(tiny_model_dir, tiny_documents(), similarity_top_k=1, chunk_tokens=40)
    rerank = OverflowRerank.from_pretrained(tiny_model_dir, top_n=1, chunk_tokens=40)
    assert llm.engine is retriever.engine is rerank.engine, "one engine: one copy of the weights, one state cache"
    assert llm.engine.config.chunk_tokens == 40 and llm.max_new_tokens == 3
    assert OverflowLLM.from_pretrained(tiny_model_dir).engine is not llm.engine, "other settings, another engine"
    query_engine = OverflowQueryEngine.from_pretrained(tiny_model_dir, tiny_documents(), chunk_tokens=40, streaming=True)
    assert query_engine.llm.engine is llm.engine and query_engine.streaming


def test_from_pretrained_passes_hub_ids_and_loader_options_through(
    tiny_engine: OPRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def load(name_or_path: Any = None, **kwargs: Any) -> OPRM:
        calls.append((name_or_path, kwargs))
        return tiny_engine

    load.__signature__ = inspect.signature(OPRM.from_pretrained)  # type: ignore[attr-defined]  # the loader's keywords
    monkeypatch.setattr(OPRM, "from_pretrained", load)
    llm = OverflowLLM.from_pretrained("org/mamba", revision="v1", dtype="bfloat16", chunk_tokens=64, max_new_tokens=5)
    assert calls == [("org/mamba", {"revision": "v1", "dtype": "bfloat16", "chunk_tokens": 64})]
    assert llm.engine is tiny_engine and llm.max_new_tokens == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda d: OverflowLLM.from_pretrained(d, max_tokens=3),
        lambda d: OverflowRetriever.from_pretrained(d, tiny_documents(), topk=3),
        lambda d: OverflowRerank.from_pretrained(d, topn=1),
        lambda d: OverflowQueryEngine.from_pretrained(d, tiny_documents(), stream=True),
    ],
    ids=["llm", "retriever", "rerank", "query-engine"],
)
def test_from_pretrained_rejects_unknown_keywords(tiny_model_dir: Path, make: Any) -> None:
    with pytest.raises(TypeError, match=r"unknown keyword argument '(max_tokens|topk|topn|stream)'.*chunk_tokens"):
        make(tiny_model_dir)


def test_constructors_reject_unknown_keywords(tiny_engine: OPRM) -> None:
    """At 8650456, ``OverflowQueryEngine(..., streaming=True)`` and any unknown keyword were silently accepted."""
    retriever = OverflowRetriever(tiny_engine, tiny_documents())
    with pytest.raises(TypeError, match="foo"):
        OverflowQueryEngine(retriever=retriever, llm=OverflowLLM(tiny_engine), foo=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="foo"):
        OverflowLLM(tiny_engine, foo=1)
    with pytest.raises(ValueError, match="foo"):
        OverflowRerank(tiny_engine, foo=1)
    with pytest.raises(TypeError, match="from_pretrained"):
        OverflowLLM("path/to/model")  # type: ignore[arg-type]


# -- nodes ------------------------------------------------------------------------------------------------------------------
def test_empty_nodes_are_skipped_with_a_warning(tiny_engine: OPRM, caplog: pytest.LogCaptureFixture) -> None:
    """At 8650456 one empty node failed the whole query with ValueError."""
    nodes = [TextNode(text="   ", id_="empty"), *(TextNode(text=t) for t, _ in sample_documents())]
    with caplog.at_level(logging.WARNING):
        hits = OverflowRetriever(tiny_engine, nodes, similarity_top_k=10).retrieve(QUESTION)
        reranked = OverflowRerank(tiny_engine, top_n=10).postprocess_nodes(
            [NodeWithScore(node=n, score=0.5) for n in nodes], query_str=QUESTION
        )
    assert "empty" not in {h.node.node_id for h in hits} | {h.node.node_id for h in reranked}
    assert hits and reranked
    assert sum("'empty'" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError, match="at least one node with text"):
        OverflowRetriever(tiny_engine, [TextNode(text=" ")])


def test_rerank_keeps_the_retrieval_score_and_counts_whole_nodes(tiny_engine: OPRM) -> None:
    """At 8650456 the re-ranker dropped the retriever's score, and top_n could only count chunks."""
    docs = [TextNode(text=t, id_=f"doc{i}") for i, (t, _) in enumerate(sample_documents())]
    given = [NodeWithScore(node=n, score=0.1 * (i + 1)) for i, n in enumerate(docs)]
    chunks = OverflowRerank(tiny_engine, top_n=3, keep_retrieval_score=True).postprocess_nodes(given, query_str=QUESTION)
    incoming = {n.node.node_id: n.score for n in given}
    for hit in chunks:
        parent = hit.node.parent_node or hit.node.source_node
        assert parent is not None
        assert hit.node.metadata[RETRIEVAL_SCORE_KEY] == incoming[parent.node_id]
        assert RETRIEVAL_SCORE_KEY not in node_text(hit.node), "the incoming score stays out of what the LLM reads"
    whole = OverflowRerank(tiny_engine, top_n=2, whole_nodes=True).postprocess_nodes(given, query_str=QUESTION)
    assert len(whole) == 2 and len({h.node.node_id for h in whole}) == 2
    assert {h.node.node_id for h in whole} <= set(incoming), "whole nodes come back, by their own ids"
    assert all(h.node.get_content() == docs[int(h.node.node_id[3:])].text for h in whole)
    ranking = tiny_engine.rank(QUESTION, [node_text(n) for n in docs])
    best_doc_first = list(dict.fromkeys(s.chunk.doc_index for s in ranking.scores))[:2]
    assert [h.node.node_id for h in whole] == [f"doc{i}" for i in best_doc_first], "ordered by each node's best chunk"
    retriever = OverflowRetriever(tiny_engine, docs, similarity_top_k=2, whole_nodes=True)
    assert [h.node.node_id for h in retriever.retrieve(QUESTION)] == [h.node.node_id for h in whole]
    assert not any(k in node_text(whole[0].node) for k in SCORE_KEYS) and ENTROPY_KEY in whole[0].node.metadata


def test_retriever_tool_queries_are_unwrapped(tiny_engine: OPRM) -> None:
    """LlamaIndex's RetrieverTool sends "\\ninput is <question>\\n": the retriever and the re-ranker score the question
    (test_llamaindex_paths.py shows with the bundled model that the wrapper makes every chunk abstain)."""
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=3)
    wrapped = f"\ninput is {QUESTION}\n"  # exactly what RetrieverTool.call(input=question) sends
    plain = [s.chunk.text for s in retriever.rank(QUESTION, k=3).scores]
    tool = RetrieverTool.from_defaults(retriever, name="search", description="Finds passages.")
    output = tool.call(input=QUESTION)
    assert [node_text(n.node) for n in output.raw_output] == plain
    rerank = OverflowRerank(tiny_engine, top_n=3)
    hits = rerank.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in plain[::-1]], query_str=wrapped)
    assert [node_text(h.node) for h in hits] == plain


# -- the query engine -----------------------------------------------------------------------------------------------------
def test_streaming_query_engine(tiny_engine: OPRM) -> None:
    """At 8650456 ``streaming=True`` was accepted and ignored: the response was not a stream."""
    docs = [Document(text=t) for t, _ in sample_documents()]
    plain = OverflowQueryEngine.from_documents(tiny_engine, docs).query(QUESTION)
    response = OverflowQueryEngine.from_documents(tiny_engine, docs, streaming=True).query(QUESTION)
    assert isinstance(response, StreamingResponse)
    pieces = list(response.response_gen)
    assert "".join(pieces).strip() == str(plain)
    assert response.metadata is not None and plain.metadata is not None
    assert response.metadata["not_found"] is plain.metadata["not_found"]
    assert response.metadata["generated_tokens"] == plain.metadata["generated_tokens"]


async def test_async_streaming_query_engine(tiny_engine: OPRM) -> None:
    docs = [Document(text=t) for t, _ in sample_documents()]
    plain = OverflowQueryEngine.from_documents(tiny_engine, docs).query(QUESTION)
    response = await OverflowQueryEngine.from_documents(tiny_engine, docs, streaming=True).aquery(QUESTION)
    assert "".join([p async for p in response.async_response_gen()]).strip() == str(plain)  # type: ignore[union-attr]


def test_streaming_says_not_found(tiny_engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index.core.base.llms.types import CompletionResponse

    llm = OverflowLLM(tiny_engine)

    def stream(self: Any, prompt: str, **kwargs: Any) -> Any:
        yield from (CompletionResponse(text="", delta=d) for d in (" not", " found", " in", "."))

    monkeypatch.setattr(type(llm), "stream_complete", stream)
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=1)
    response = OverflowQueryEngine(retriever=retriever, llm=llm, streaming=True).query(QUESTION)
    assert list(response.response_gen) == [NOT_FOUND_ANSWER]  # type: ignore[union-attr]
    assert response.metadata is not None and response.metadata["not_found"] is True


def test_query_and_rerank_events(tiny_engine: OPRM, events: list[Any]) -> None:
    """At 8650456 the query engine emitted no query events and the re-ranker no rerank events."""
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=3)
    rerank = OverflowRerank(tiny_engine, top_n=1)
    query_engine = OverflowQueryEngine(retriever=retriever, llm=OverflowLLM(tiny_engine), node_postprocessors=[rerank])
    response = query_engine.query(QUESTION)
    kinds = [type(e) for e in events]
    assert kinds.count(QueryStartEvent) == 1 and kinds.count(QueryEndEvent) == 1
    assert kinds.index(QueryStartEvent) < kinds.index(ReRankStartEvent) < kinds.index(ReRankEndEvent)
    assert kinds.index(ReRankEndEvent) < kinds.index(QueryEndEvent)
    start = next(e for e in events if isinstance(e, ReRankStartEvent))
    end = next(e for e in events if isinstance(e, ReRankEndEvent))
    assert start.top_n == 1 and start.model_name == tiny_engine.name and len(start.nodes) == 3
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in response.source_nodes]
