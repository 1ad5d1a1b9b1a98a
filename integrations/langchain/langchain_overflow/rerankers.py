"""OverflowReranker: re-rank any retriever's documents by the model's own entropy (a LangChain document compressor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, model_validator

from langchain_overflow import _handoff
from langchain_overflow._common import EngineSource
from langchain_overflow._documents import (
    DEFAULT_METADATA_KEY,
    as_langchain_documents,
    check_metadata_key,
    relevance_score,
    scores_metadata,
    to_core,
)
from langchain_overflow.retrievers import check_query
from overflow_core import ChunkScore

__all__ = ["OverflowReranker"]


class OverflowReranker(EngineSource, BaseDocumentCompressor):
    """Re-rank candidate documents (from BM25, a vector store, ...) by OPRM entropy.

    Each candidate is its own document for the engine: it is scored as ``prompt + document + question``, in micro-batches
    of at most the engine's ``max_batch_tokens``, so a large candidate set stays within the engine's memory budget. A
    candidate longer than ``chunk_tokens`` is chunked and scored by its best chunk. Candidates may be any Document-like;
    empty ones are skipped with a warning (the others are still ranked).

    The output keeps each Document (``page_content``, ``id`` and every metadata field) and adds the scores of its best
    chunk under ``metadata["overflow"]`` (``metadata_key``; the same fields as :class:`OverflowRetriever`'s); with
    ``relevance_score=True`` also ``metadata["relevance_score"]``, a 0-1 score in rank order, above 0.5 exactly for
    candidates that answer (for thresholds written for other rerankers; it replaces an upstream reranker's value).
    Abstaining documents come after every answering one.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> reranked = ContextualCompressionRetriever(
        ...     base_compressor=OverflowReranker(engine=engine, top_n=3), base_retriever=bm25_retriever
        ... )  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    top_n: int | None = 3
    """How many documents to keep; ``None`` keeps them all, re-ordered."""
    metadata_key: str = DEFAULT_METADATA_KEY
    """The metadata key the scores go under."""
    relevance_score: bool = False
    """Also set ``metadata["relevance_score"]`` (0-1, above 0.5 exactly for answering candidates)."""

    @model_validator(mode="after")
    def _check_top_n(self) -> OverflowReranker:
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n: expected a positive number of documents or None, got {self.top_n}")
        return self

    def compress_documents(
        self, documents: Sequence[Any], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The ``top_n`` best of ``documents`` for ``query``, best first, with their scores in their metadata."""
        docs, _ = as_langchain_documents(list(documents), what="documents")
        if not docs:
            return []
        engine = self.engine
        check_query(engine, query)
        check_metadata_key(docs, self.metadata_key)
        ranking = engine.rank(query, [(to_core(d, self.metadata_key)[0], {}) for d in docs])
        _handoff.remember(engine, query, ranking.scores[:1])  # rank(k=None) leaves the best state in the cache
        best: dict[int, ChunkScore] = {}
        for score in ranking.scores:  # best first: a document's first chunk seen is its best
            best.setdefault(score.chunk.doc_index, score)
        out = []
        for rank, (i, score) in enumerate(list(best.items())[: self.top_n]):
            doc = docs[i]
            metadata = {k: v for k, v in doc.metadata.items() if k != self.metadata_key}
            metadata[self.metadata_key] = {**scores_metadata(score), "rank": rank}
            if self.relevance_score:
                metadata["relevance_score"] = relevance_score(
                    score, criterion=engine.config.criterion, idk_filter=engine.config.idk_filter
                )
            out.append(doc.model_copy(update={"metadata": metadata}))
        return out
