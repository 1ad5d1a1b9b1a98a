"""Query engines on a tiny random model: OverflowQueryEngine and the documented RetrieverQueryEngine set-up, the
re-ranker inside a query engine, the not-found path and the state handoff."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.llms.overflow import OverflowLLM
from llama_index.postprocessor.overflow import OverflowRerank
from llama_index.query_engine.overflow import NOT_FOUND_ANSWER, OverflowQueryEngine
from llama_index.retrievers.overflow import IDK_KEY, OverflowRetriever, node_text, sentence_splitter
from llamaindex_data import QUESTION, tiny_documents

from overflow_core import OPRM
from overflow_core.testing import sample_documents


def plain_documents() -> list[Document]:
    """No metadata, so the engine's own answer over the raw texts is the from-scratch reference."""
    return [Document(text=text) for text, _ in sample_documents()]


def test_overflow_query_engine_equals_the_engines_answer(tiny_engine: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(tiny_engine)
    query_engine = OverflowQueryEngine.from_documents(tiny_engine, plain_documents(), similarity_top_k=3)
    response = query_engine.query(QUESTION)
    assert len(response.source_nodes) == 3
    assert [g.prompt_forward_tokens for g in generations] == [0], "the LLM must continue from the retrieved state"
    reference = tiny_engine.answer(QUESTION, [text for text, _ in sample_documents()])
    expected = reference.text if not reference.not_found else NOT_FOUND_ANSWER
    assert str(response) == expected
    assert response.metadata is not None and response.metadata["not_found"] is reference.not_found


async def test_overflow_query_engine_async_matches_sync(tiny_engine: OPRM) -> None:
    query_engine = OverflowQueryEngine.from_documents(tiny_engine, tiny_documents())
    sync = query_engine.query(QUESTION)
    tiny_engine.state_cache.clear()
    result = await query_engine.aquery(QUESTION)
    assert str(result) == str(sync)
    assert [n.node.node_id for n in result.source_nodes] == [n.node.node_id for n in sync.source_nodes]


class FixedRetriever(BaseRetriever):
    """Returns the nodes it was given (for the not-found logic, independent of any model)."""

    def __init__(self, nodes: list[NodeWithScore]) -> None:
        self._fixed = nodes
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return list(self._fixed)


def test_every_chunk_abstaining_answers_not_found_without_asking_the_llm(tiny_engine: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(tiny_engine)
    abstaining = [
        NodeWithScore(node=TextNode(text=f"Filler {i}.", metadata={IDK_KEY: True}), score=-1.0) for i in range(3)
    ]
    query_engine = OverflowQueryEngine(retriever=FixedRetriever(abstaining), llm=OverflowLLM(tiny_engine))
    response = query_engine.query(QUESTION)
    assert str(response) == NOT_FOUND_ANSWER
    assert response.metadata == {
        "not_found": True,
        "prompt_forward_tokens": 0,
        "reused_tokens": 0,
        "generated_tokens": 0,
        "finish_reason": None,
    }, "the usage keys a completion reports must be there, zero, when the LLM was not called"
    assert len(response.source_nodes) == 3
    assert generations == [], "with every chunk abstaining the LLM must not be asked to guess"


def test_a_not_found_generation_is_reported_as_not_found(tiny_engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    node = NodeWithScore(node=TextNode(text="Laura went to the park."), score=-1.0)
    llm = OverflowLLM(tiny_engine)
    query_engine = OverflowQueryEngine(retriever=FixedRetriever([node]), llm=llm, not_found_answer="Nothing found.")
    from llama_index.core.base.llms.types import CompletionResponse

    monkeypatch.setattr(type(llm), "complete", lambda self, prompt, **kw: CompletionResponse(text=" not found"))
    response = query_engine.query(QUESTION)
    assert str(response) == "Nothing found."
    assert response.metadata is not None and response.metadata["not_found"] is True


def test_retriever_query_engine_set_up_hands_the_state_over(tiny_engine: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(tiny_engine)
    nodes = sentence_splitter(tiny_engine).get_nodes_from_documents(plain_documents())
    retriever = OverflowRetriever(tiny_engine, nodes, similarity_top_k=1)
    query_engine = RetrieverQueryEngine.from_args(retriever, llm=OverflowLLM(tiny_engine))
    assert isinstance(query_engine, RetrieverQueryEngine)
    response = query_engine.query(QUESTION)
    assert len(generations) == 1 and generations[0].prompt_forward_tokens == 0, (
        "the synthesizer's prompt must be the prompt the retriever scored (a full state-cache hit)"
    )
    assert str(response) == generations[0].text.strip() or str(response) == generations[0].text


def test_rerank_orders_any_retrievers_nodes_by_entropy(tiny_engine: OPRM) -> None:
    nodes = sentence_splitter(tiny_engine).get_nodes_from_documents(plain_documents())
    base = SummaryIndex(nodes).as_retriever()  # returns every node, no model involved
    retrieved = base.retrieve(QUESTION)
    assert len(retrieved) == len(nodes)
    reranked = OverflowRerank(tiny_engine, top_n=3).postprocess_nodes(retrieved, query_str=QUESTION)
    ranking = tiny_engine.rank(QUESTION, [node_text(n.node) for n in retrieved], k=3)
    assert [n.node.get_content() for n in reranked] == [s.chunk.text for s in ranking.scores]
    assert [n.score for n in reranked] == pytest.approx([s.score for s in ranking.scores])
    assert OverflowRerank(tiny_engine).postprocess_nodes([], query_str=QUESTION) == []
    with pytest.raises(ValueError, match="query_bundle"):
        OverflowRerank(tiny_engine).postprocess_nodes(retrieved)


def test_rerank_in_a_query_engine_hands_the_state_over(tiny_engine: OPRM, spy_complete: Any) -> None:
    generations = spy_complete(tiny_engine)
    nodes = sentence_splitter(tiny_engine).get_nodes_from_documents(plain_documents())
    rerank = OverflowRerank(tiny_engine, top_n=1)
    query_engine = RetrieverQueryEngine.from_args(
        SummaryIndex(nodes).as_retriever(), llm=OverflowLLM(tiny_engine), node_postprocessors=[rerank]
    )
    response = query_engine.query(QUESTION)
    assert len(response.source_nodes) == 1
    assert [g.prompt_forward_tokens for g in generations] == [0]


async def test_rerank_async_and_duplicate_node_ids(tiny_engine: OPRM) -> None:
    node = TextNode(text="Laura went to the park and lost an umbrella.", id_="same")
    other = TextNode(text="The ship Dune has RWZ 511 as license plate.", id_="same")
    nodes = [NodeWithScore(node=node, score=0.5), NodeWithScore(node=other, score=0.4)]
    rerank = OverflowRerank(tiny_engine, top_n=2)
    sync = rerank.postprocess_nodes(nodes, query_str=QUESTION)
    result = await rerank.apostprocess_nodes(nodes, query_str=QUESTION)
    assert sorted(n.node.get_content() for n in result) == sorted([node.text, other.text])
    assert [n.node.get_content() for n in result] == [n.node.get_content() for n in sync]


def test_the_settings_guard_catches_a_fallback(tiny_engine: OPRM, settings_guard: list[str]) -> None:
    """The autouse guard (conftest) would fail any test above that touched Settings.llm: show it has teeth."""
    retriever = OverflowRetriever(tiny_engine, tiny_documents())
    with pytest.raises(AssertionError, match=r"Settings\.llm was used"):
        RetrieverQueryEngine.from_args(retriever)  # no llm= given: LlamaIndex reaches for Settings.llm
    assert "llm" in settings_guard
    settings_guard.clear()


class SaysLLM(OverflowLLM):
    """An OverflowLLM whose completion is fixed (``answer``), streamed one character per delta."""

    answer: str = ""

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.answer)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        def gen() -> Any:
            text = ""
            for char in self.answer:
                text += char
                yield CompletionResponse(text=text, delta=char)
            yield CompletionResponse(text=text, delta="")

        return gen()

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        async def gen() -> Any:
            for response in self.stream_complete(prompt):
                yield response

        return gen()


@pytest.mark.parametrize(
    ("answer", "expected", "not_found"),
    [
        ("No", "No", False),
        ("no", "no", False),
        ("n", "n", False),
        ("not", "not", False),
        (" Not fou", "Not fou", False),
        ("not found", NOT_FOUND_ANSWER, True),
        ("Not found.", NOT_FOUND_ANSWER, True),
        (" not found in the text\n", NOT_FOUND_ANSWER, True),
        ("4412", "4412", False),
        (" 4412 \n", "4412", False),
        ("Nothing", "Nothing", False),
    ],
)
async def test_streaming_and_not_streaming_agree_on_not_found(
    tiny_engine: OPRM, answer: str, expected: str, not_found: bool
) -> None:
    """At 17c36d4 an answer that is a prefix of the not-found phrase ("No", "not") was 'No' without streaming and
    'Not found in the documents.' (not_found=True) with it."""
    node = NodeWithScore(node=TextNode(text="The locker number of Alice Baker is 4412."), score=-1.0)
    llm = SaysLLM(tiny_engine, answer=answer)
    plain = OverflowQueryEngine(FixedRetriever([node]), llm).query(QUESTION)
    streamed = OverflowQueryEngine(FixedRetriever([node]), llm, streaming=True).query(QUESTION)
    text = "".join(streamed.response_gen)  # type: ignore[union-attr]
    astreamed = await OverflowQueryEngine(FixedRetriever([node]), llm, streaming=True).aquery(QUESTION)
    atext = "".join([piece async for piece in astreamed.async_response_gen()])  # type: ignore[union-attr]
    assert plain.response == text == atext == expected
    for response in (plain, streamed, astreamed):
        assert response.metadata is not None and response.metadata["not_found"] is not_found


def test_from_pretrained_defaults_to_the_bundled_model(tiny_engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 17c36d4 ``OverflowQueryEngine.from_pretrained(documents=docs)`` raised TypeError: ``name_or_path`` had no
    default, unlike every other ``from_pretrained``."""
    from llama_index.query_engine.overflow import base

    calls: list[tuple[Any, dict[str, Any]]] = []

    def shared_engine(name_or_path: Any = None, **settings: Any) -> OPRM:
        calls.append((name_or_path, settings))
        return tiny_engine

    monkeypatch.setattr(base, "shared_engine", shared_engine)
    query_engine = OverflowQueryEngine.from_pretrained(documents=tiny_documents(), similarity_top_k=1)
    assert calls == [(None, {})] and query_engine.llm.engine is tiny_engine
    assert len(query_engine.query(QUESTION).source_nodes) == 1
    with pytest.raises(ValueError, match="documents: expected the documents"):
        OverflowQueryEngine.from_pretrained()
