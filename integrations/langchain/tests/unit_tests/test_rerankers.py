"""OverflowReranker on a tiny random model: scores, kept metadata, top_n, batching, ContextualCompressionRetriever."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_overflow import OverflowReranker
from overflow_core import OPRM
from tests.engines import QUESTION, tiny_corpus


@pytest.fixture
def candidates() -> list[Document]:
    """Sentences of the corpus as candidate documents, as a BM25 or vector store retriever would return them."""
    out = []
    for text, meta in tiny_corpus():
        for i, sentence in enumerate(s for s in text.replace("\n", " ").split(". ") if s.strip()):
            out.append(
                Document(
                    page_content=sentence, metadata={**meta, "sentence": i, "bm25": 1.0}, id=f"{meta['source']}#{i}"
                )
            )
    return out


def test_relevance_score_order_and_kept_metadata(engine: OPRM, candidates: list[Document]) -> None:
    ranking = engine.rank(QUESTION, [d.page_content for d in candidates])
    out = OverflowReranker(engine=engine, top_n=5, relevance_score=True).compress_documents(candidates, QUESTION)
    assert [d.page_content for d in out] == [candidates[s.chunk.doc_index].page_content for s in ranking.scores[:5]]
    relevances = [d.metadata["relevance_score"] for d in out]
    assert relevances == sorted(relevances, reverse=True) and all(0.0 <= r <= 1.0 for r in relevances)
    for doc, score in zip(out, ranking.scores, strict=False):
        source = candidates[score.chunk.doc_index]
        assert doc.id == source.id
        assert {k: v for k, v in doc.metadata.items() if k not in ("relevance_score", "overflow")} == source.metadata
        assert doc.metadata["overflow"]["score"] == pytest.approx(score.score)
        assert doc.metadata["overflow"]["not_found"] is score.idk
        assert (doc.metadata["relevance_score"] > 0.5) is (not score.idk)
    assert "overflow" not in candidates[0].metadata, "the input documents must not be modified"


def test_top_n(engine: OPRM, candidates: list[Document]) -> None:
    assert len(OverflowReranker(engine=engine, top_n=2).compress_documents(candidates, QUESTION)) == 2
    assert len(OverflowReranker(engine=engine, top_n=None).compress_documents(candidates, QUESTION)) == len(candidates)
    assert OverflowReranker(engine=engine).compress_documents([], QUESTION) == []
    with pytest.raises(ValueError, match="top_n: expected a positive number"):
        OverflowReranker(engine=engine, top_n=0)


def test_a_long_candidate_is_scored_by_its_best_chunk(engine: OPRM) -> None:
    long_text = " ".join(text for text, _ in tiny_corpus())  # many 48-token chunks
    docs = [Document(page_content=long_text, metadata={"source": "long"}), Document(page_content="A short note.")]
    out = OverflowReranker(engine=engine, top_n=None).compress_documents(docs, QUESTION)
    assert sorted(d.metadata.get("source", "") for d in out) == ["", "long"], "each candidate appears once"
    best = engine.rank(QUESTION, [long_text]).scores[0]
    long_doc = next(d for d in out if d.metadata.get("source") == "long")
    assert long_doc.metadata["overflow"]["score"] == pytest.approx(best.score, abs=1e-4)


def test_large_candidate_sets_are_prefilled_in_token_budgeted_batches(engine: OPRM, candidates: list[Document]) -> None:
    budget = 256
    small = OPRM(engine.model, engine.tokenizer, engine.config.with_overrides(max_batch_tokens=budget))
    batches: list[tuple[int, int]] = []
    prefill = small.backend.prefill

    def counting_prefill(ids: Any, mask: Any) -> Any:
        batches.append(tuple(ids.shape))
        return prefill(ids, mask)

    small.backend.prefill = counting_prefill  # type: ignore[method-assign]
    batched = OverflowReranker(engine=small, top_n=None).compress_documents(candidates, QUESTION)
    whole = OverflowReranker(engine=engine, top_n=None).compress_documents(candidates, QUESTION)
    assert len(batches) > 1 and all(rows * length <= budget for rows, length in batches), batches
    # same scores per document (padding and batch size change float rounding only); the order may differ only
    # between candidates whose scores tie within that rounding (the corpus repeats some sentences word for word)
    whole_scores = {d.id: d.metadata["overflow"]["score"] for d in whole}
    assert {d.id: pytest.approx(d.metadata["overflow"]["score"], abs=1e-4) for d in batched} == whole_scores


async def test_in_contextual_compression_retriever(engine: OPRM, candidates: list[Document]) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    class Candidates(BaseRetriever):
        docs: list[Document]

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            return self.docs

    retriever = ContextualCompressionRetriever(
        base_compressor=OverflowReranker(engine=engine, top_n=3), base_retriever=Candidates(docs=candidates)
    )
    expected = OverflowReranker(engine=engine, top_n=3).compress_documents(candidates, QUESTION)
    for out in (retriever.invoke(QUESTION), await retriever.ainvoke(QUESTION)):
        assert [d.id for d in out] == [d.id for d in expected]
        assert all("overflow" in d.metadata and d.metadata["bm25"] == 1.0 for d in out)
