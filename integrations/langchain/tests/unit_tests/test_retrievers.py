"""OverflowRetriever plumbing on a tiny random model: metadata, k, validation, async, callbacks, splitters, an index."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document

from langchain_overflow import OverflowRetriever
from overflow_core import OPRM
from overflow_core.testing import RANKING_ATOL
from tests.engines import QUESTION, tiny_corpus


@pytest.fixture
def docs() -> list[Document]:
    return [Document(page_content=text, metadata=meta) for text, meta in tiny_corpus()]


def test_documents_carry_source_metadata_and_scores(engine: OPRM, docs: list[Document]) -> None:
    ranking = engine.rank(QUESTION, [(d.page_content, d.metadata) for d in docs])
    out = OverflowRetriever(engine=engine, documents=docs, k=3).invoke(QUESTION)
    assert len(out) == 3
    for rank, (doc, score) in enumerate(zip(out, ranking.scores, strict=False)):
        chunk = score.chunk
        source = docs[chunk.doc_index]
        assert doc.page_content == chunk.text
        assert (
            source.page_content[doc.metadata["overflow"]["start"] : doc.metadata["overflow"]["end"]] == doc.page_content
        ), "span must locate the chunk"
        assert doc.metadata["source"] == source.metadata["source"]
        assert doc.metadata["overflow"]["rank"] == rank
        assert doc.metadata["overflow"]["score"] == pytest.approx(-doc.metadata["overflow"]["entropy"])
        assert doc.metadata["overflow"]["entropy"] == pytest.approx(score.entropy)
        assert doc.metadata["overflow"]["not_found"] is score.idk
        assert doc.metadata["overflow"]["not_found_prob"] == pytest.approx(score.not_found_prob)
        assert 0.0 < doc.metadata["overflow"]["not_found_prob"] < 1.0
        assert doc.metadata["overflow"]["doc_index"] == chunk.doc_index
        assert doc.metadata["overflow"]["chunk_index"] == chunk.index
    answering = [d.metadata["overflow"]["score"] for d in out if not d.metadata["overflow"]["not_found"]]
    assert answering == sorted(answering, reverse=True), "answering chunks must come best (highest score) first"


def test_k_in_constructor_and_per_call(engine: OPRM, docs: list[Document]) -> None:
    retriever = OverflowRetriever(engine=engine, documents=docs, k=2)
    assert len(retriever.invoke(QUESTION)) == 2
    assert len(retriever.invoke(QUESTION, k=5)) == 5
    assert [d.page_content for d in retriever.invoke(QUESTION, k=1)] == [retriever.invoke(QUESTION)[0].page_content]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"documents": []}, "documents: expected at least one non-empty Document"),
        ({"k": 0}, "k: expected a positive number"),
        ({"index": object()}, "documents / index: expected one of them"),
    ],
)
def test_bad_arguments_name_the_argument(
    engine: OPRM, docs: list[Document], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OverflowRetriever(**{"engine": engine, "documents": docs, **kwargs})
    with pytest.raises(ValueError, match=r"engine: expected an overflow_core\.OPRM engine, got str"):
        OverflowRetriever(engine="path/to/model", documents=docs)


def test_text_splitter_output_and_from_texts(engine: OPRM) -> None:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    texts, metas = zip(*tiny_corpus(), strict=True)
    splits = RecursiveCharacterTextSplitter(chunk_size=200, chunk_overlap=0).create_documents(list(texts), list(metas))
    out = OverflowRetriever.from_documents(splits, engine, k=3).invoke(QUESTION)
    assert len(out) == 3 and all(d.metadata["source"].startswith("doc") for d in out)
    by_texts = OverflowRetriever.from_texts(texts, engine, metadatas=metas, k=3).invoke(QUESTION)
    by_docs = OverflowRetriever(
        engine=engine, documents=[Document(t, metadata=m) for t, m in zip(texts, metas, strict=True)]
    )
    assert [d.page_content for d in by_texts] == [d.page_content for d in by_docs.invoke(QUESTION, k=3)]


async def test_ainvoke_matches_invoke_and_leaves_the_event_loop_free(engine: OPRM, docs: list[Document]) -> None:
    retriever = OverflowRetriever(engine=engine, documents=docs * 4, k=3)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    out = await retriever.ainvoke(QUESTION)
    elapsed = time.perf_counter() - start
    task.cancel()
    assert [d.page_content for d in out] == [d.page_content for d in retriever.invoke(QUESTION)]
    # a blocked loop would not tick at all while the prefill runs; a free one ticks about every millisecond
    assert ticks >= min(3, int(elapsed / 0.002)), f"event loop ticked {ticks} times in {elapsed:.3f}s: it was blocked"


def test_callbacks_see_the_retriever_run(engine: OPRM, docs: list[Document]) -> None:
    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, Any]] = []

        def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kwargs: Any) -> None:
            self.events.append(("start", query))

        def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
            self.events.append(("end", len(documents)))

    recorder = Recorder()
    OverflowRetriever(engine=engine, documents=docs, k=2).invoke(QUESTION, config={"callbacks": [recorder]})
    assert recorder.events == [("start", QUESTION), ("end", 2)]


def test_index_is_used_in_place_of_documents(engine: OPRM, docs: list[Document]) -> None:
    pytest.importorskip("overflow_core.index", reason="the state index (issue 3) is not in this checkout")
    pairs = [(d.page_content, d.metadata) for d in docs]
    index = engine.index(pairs)
    from_index = OverflowRetriever(index=index, k=3).invoke(QUESTION)
    from_docs = OverflowRetriever(engine=engine, documents=docs, k=3).invoke(QUESTION)
    engine_scores = {(s.chunk.source, s.chunk.start): s for s in engine.rank(QUESTION, pairs).scores}
    # A random model's near-uniform rows tie to the 6th decimal, so two chunks may swap places between the two paths:
    # each chunk from the index must carry the engine's score for that chunk, and each rank the same score on both paths.
    for a, b in zip(from_index, from_docs, strict=True):
        ref = engine_scores[(a.metadata["source"], a.metadata["overflow"]["start"])]
        assert a.page_content == ref.chunk.text
        assert a.metadata["overflow"]["entropy"] == pytest.approx(ref.entropy, abs=RANKING_ATOL)
        assert a.metadata["overflow"]["entropy"] == pytest.approx(b.metadata["overflow"]["entropy"], abs=RANKING_ATOL)
        assert a.metadata["overflow"]["not_found"] is b.metadata["overflow"]["not_found"] is ref.idk


def test_an_index_retrievers_engine_is_the_index_engine(engine: OPRM, docs: list[Document]) -> None:
    """``retriever.engine`` on an index is the engine the index ranks with (it used to load the bundled model beside it,
    so ``ChatOverflow(engine=retriever.engine)`` missed the handoff and ``create_overflow_chain`` refused it)."""
    from langchain_overflow import ChatOverflow, create_overflow_chain

    retriever = OverflowRetriever(index=engine.index([(d.page_content, d.metadata) for d in docs]), k=2)
    assert retriever.engine is engine and retriever.model == engine.name
    create_overflow_chain(retriever, ChatOverflow(engine=retriever.engine, max_tokens=2))  # refused before


def test_any_object_with_rank_works_as_an_index(engine: OPRM, docs: list[Document]) -> None:
    calls: list[tuple[str, int | None]] = []

    class FakeIndex:
        def rank(self, question: str, k: int | None = None) -> Any:
            calls.append((question, k))
            return engine.rank(question, [(d.page_content, d.metadata) for d in docs], k=k)

    out = OverflowRetriever(index=FakeIndex(), k=2).invoke(QUESTION, k=4)
    assert len(out) == 4 and calls == [(QUESTION, 4)]
