"""OverflowRetriever: rank chunks by the model's own next-token entropy (OPRM) and return the best as LangChain Documents."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, model_validator

from overflow_core import OPRM, ChunkScore, Ranking

__all__ = ["OverflowRetriever", "to_document"]


def to_document(score: ChunkScore) -> Document:
    """A scored chunk as a LangChain Document: the chunk's text, its document's metadata and how it scored.

    Added metadata: ``score`` (``-entropy`` under the default criterion, minus 1000 on abstainers; higher is better and
    sorts as ``rank``), ``entropy`` (nats), ``top_prob``, ``not_found_prob`` (probability that the answer starts with
    the not-found phrase), ``rank`` (0 is best), ``not_found`` (the model's most likely first token starts the not-found
    answer: this chunk abstains), ``start`` / ``end`` (character span in the source document), ``doc_index`` and
    ``chunk_index``. Other fields, ``source`` included, are the source document's. Abstaining chunks rank after every
    answering one whatever their score.
    """
    chunk = score.chunk
    metadata = {
        **chunk.metadata,
        "score": score.score,
        "entropy": score.entropy,
        "top_prob": score.top_prob,
        "not_found_prob": score.not_found_prob,
        "rank": score.rank,
        "not_found": score.idk,
        "start": chunk.start,
        "end": chunk.end,
        "doc_index": chunk.doc_index,
        "chunk_index": chunk.index,
    }
    return Document(page_content=chunk.text, metadata=metadata)


class OverflowRetriever(BaseRetriever):
    """Retrieve the chunks the model is surest it can answer from.

    Every chunk of ``documents`` is prefilled as ``prompt + chunk + question`` in one batch and ranked by the entropy of
    the next-token distribution (lowest first, abstaining chunks last); the top ``k`` come back as Documents, best first.
    The states of those ``k`` chunks stay in the engine's state cache, so :class:`ChatOverflow` on the same engine,
    given the top chunk through :func:`overflow_rag_prompt`, decodes without prefilling it again.

    Give either ``engine`` and ``documents`` (LangChain Documents, a text splitter's output; long ones are chunked by
    the engine) or ``index`` (anything with ``rank(question, k=...) -> Ranking``, such as a state index).

    Example:
        >>> from overflow_core import OPRM
        >>> from langchain_overflow import OverflowRetriever
        >>> retriever = OverflowRetriever.from_texts(["The locker number of Alice Baker is 4412."], OPRM.from_pretrained())
        >>> retriever.invoke("What is the locker number of Alice Baker?", k=1)[0].metadata["rank"]  # doctest: +SKIP
        0
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: OPRM | None = Field(default=None, exclude=True, repr=False)
    """The engine that scores the chunks (not needed with ``index``)."""
    documents: list[Document] = Field(default_factory=list, repr=False)
    """The corpus; each Document is chunked by the engine, its metadata copied to every chunk."""
    index: Any = Field(default=None, exclude=True, repr=False)
    """A prebuilt index with ``rank(question, k=...)``, used instead of ``engine`` + ``documents``."""
    k: int = 4
    """How many chunks to return; ``invoke(question, k=...)`` overrides it for one call."""

    @model_validator(mode="after")
    def _check_sources(self) -> OverflowRetriever:
        if self.k < 1:
            raise ValueError(f"k: expected a positive number of chunks, got {self.k}")
        if self.index is not None:
            if self.documents:
                raise ValueError("documents / index: expected one of them, got both")
            if not callable(getattr(self.index, "rank", None)):
                raise ValueError(
                    f"index: expected an object with rank(question, k=...), got {type(self.index).__name__}"
                )
            return self
        if self.engine is None:
            raise ValueError("engine: expected an overflow_core.OPRM engine (or an index=), got None")
        if not self.documents:
            raise ValueError("documents: expected at least one Document (or an index=), got none")
        return self

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], engine: OPRM, metadatas: Iterable[dict[str, Any]] | None = None, **kwargs: Any
    ) -> OverflowRetriever:
        """A retriever over ``texts`` (with ``metadatas`` in the same order)."""
        texts = list(texts)
        metas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        if len(metas) != len(texts):
            raise ValueError(f"metadatas: expected one per text ({len(texts)}), got {len(metas)}")
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metas, strict=True)]
        return cls(engine=engine, documents=docs, **kwargs)

    @classmethod
    def from_documents(cls, documents: Iterable[Document], engine: OPRM, **kwargs: Any) -> OverflowRetriever:
        """A retriever over LangChain ``documents`` (for example a text splitter's output)."""
        return cls(engine=engine, documents=list(documents), **kwargs)

    def rank(self, query: str, k: int | None = None) -> Ranking:
        """The engine's full :class:`overflow_core.Ranking` of the top ``k`` chunks (timings and token counts included)."""
        k = self.k if k is None else k
        if self.index is not None:
            return self.index.rank(query, k=k)  # type: ignore[no-any-return]
        assert self.engine is not None  # the validator guarantees it
        return self.engine.rank(query, [(d.page_content, d.metadata) for d in self.documents], k=k)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return [to_document(s) for s in self.rank(query, k).scores]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        ranking = await run_in_executor(None, self.rank, query, k)  # the prefill runs in a worker thread
        return [to_document(s) for s in ranking.scores]
