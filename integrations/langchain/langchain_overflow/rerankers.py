"""OverflowReranker: re-rank any retriever's documents by the model's own entropy (a LangChain document compressor)."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, model_validator

from overflow_core import OPRM, ChunkScore

__all__ = ["OverflowReranker"]


class OverflowReranker(BaseDocumentCompressor):
    """Re-rank candidate documents (from BM25, a vector store, ...) by OPRM entropy.

    Each candidate is its own document for the engine: it is scored as ``prompt + document + question``, in micro-batches
    of at most the engine's ``max_batch_tokens``, so a large candidate set stays within the engine's memory budget. A
    candidate longer than ``chunk_tokens`` is chunked and scored by its best chunk. The output keeps each Document
    (``page_content``, ``id`` and every metadata field) and adds ``metadata["relevance_score"]`` (``-entropy``, minus
    1000 on abstainers; higher is better) and ``metadata["not_found"]``; abstaining documents come after every answering
    one, and their scores are lower.

    Example:
        >>> from langchain_classic.retrievers import ContextualCompressionRetriever
        >>> reranked = ContextualCompressionRetriever(
        ...     base_compressor=OverflowReranker(engine=engine, top_n=3), base_retriever=bm25_retriever
        ... )  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: OPRM = Field(exclude=True, repr=False)
    top_n: int | None = 3
    """How many documents to keep; ``None`` keeps them all, re-ordered."""

    @model_validator(mode="after")
    def _check_top_n(self) -> OverflowReranker:
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top_n: expected a positive number of documents or None, got {self.top_n}")
        return self

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The ``top_n`` best of ``documents`` for ``query``, best first, with ``relevance_score`` in their metadata."""
        if not documents:
            return []
        ranking = self.engine.rank(query, [d.page_content for d in documents])
        best: dict[int, ChunkScore] = {}
        for score in ranking.scores:  # best first: a document's first chunk seen is its best
            best.setdefault(score.chunk.doc_index, score)
        order = list(best)[: self.top_n]
        return [
            documents[i].model_copy(
                update={
                    "metadata": {
                        **documents[i].metadata,
                        "relevance_score": best[i].score,
                        "not_found": best[i].idk,
                    }
                }
            )
            for i in order
        ]
