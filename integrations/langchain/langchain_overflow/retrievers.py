"""OverflowRetriever: rank chunks by the model's own next-token entropy (OPRM) and return the best as LangChain Documents."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import ToolException
from pydantic import ConfigDict, Field, field_validator, model_validator

from langchain_overflow import _handoff
from langchain_overflow._common import EngineSource
from langchain_overflow._documents import (
    DEFAULT_METADATA_KEY,
    as_langchain_documents,
    check_metadata_key,
    relevance_score,
    to_core,
    to_document,
)
from langchain_overflow._engines import load_engine
from overflow_core import OPRM, ChunkScore, Ranking
from overflow_core.chunking import encode_text
from overflow_core.errors import InputError

__all__ = ["OverflowRetriever", "QueryError", "check_query", "to_document"]


class QueryError(InputError, ToolException):
    """A query the engine cannot use (empty, or longer than a chunk).

    A ``ValueError`` for code, and a ``ToolException`` for agents: a tool built with ``handle_tool_error=True`` (as
    :func:`create_overflow_retriever_tool` builds it) returns the message to the model instead of failing the run.
    """


def check_query(engine: OPRM | None, query: Any) -> None:
    """Raise :class:`QueryError` with a message a person or an agent can act on when ``query`` cannot be used."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError(
            f"query: expected a question, got {query!r}; ask about one fact, e.g. 'What is the locker number of "
            "Alice Baker?'"
        )
    if engine is None:
        return
    try:
        engine.encode_question(query)
    except InputError as exc:
        limit = engine.config.chunk_tokens
        try:
            n = len(encode_text(engine.tokenizer, query.strip()))
        except InputError:
            n = 0
        if n > limit:
            raise QueryError(
                f"query: expected at most {limit} tokens, got {n}; ask a shorter question with only the key words "
                "of one fact"
            ) from exc
        raise QueryError(f"query: {exc}") from exc


class OverflowRetriever(EngineSource, BaseRetriever):
    """Retrieve the chunks the model is surest it can answer from.

    Every chunk of ``documents`` is prefilled as ``prompt + chunk + question`` in one batch and ranked by the entropy of
    the next-token distribution (lowest first, abstaining chunks last); the top ``k`` come back as Documents, best first.
    The states of those ``k`` chunks stay in the engine's state cache, so :class:`ChatOverflow` on the same engine,
    given the top chunk through :func:`overflow_rag_prompt`, decodes without prefilling it again
    (:func:`create_overflow_chain` builds that chain).

    Give ``documents`` (anything Document-like: LangChain Documents, strings, ``(text, metadata)`` pairs, dicts; empty
    ones are skipped with a warning) with an ``engine`` (or ``model=``, loaded on first use and shared), or ``index``
    (a state index, or anything with ``rank(question, k=...) -> Ranking``); ``from_documents(docs, engine, index=True)``
    builds a state index over LangChain Documents.

    Each returned Document keeps its source document's ``id`` and metadata; the scores go under
    ``metadata["overflow"]`` (``metadata_key``), never over a key of yours, and with ``relevance_score=True`` a 0-1
    ``metadata["relevance_score"]`` is added (above 0.5 exactly for chunks that answer). An empty or over-long query
    raises :class:`QueryError` (a ``ValueError`` and a LangChain ``ToolException``).

    Example:
        >>> from overflow_core import OPRM
        >>> from langchain_overflow import OverflowRetriever
        >>> retriever = OverflowRetriever.from_texts(["The locker number of Alice Baker is 4412."], OPRM.from_pretrained())
        >>> retriever.invoke("What is the locker number of Alice Baker?", k=1)[0].metadata["overflow"]["rank"]
        0
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)
    _SHARED: ClassVar[tuple[str, ...]] = ("engine_", "index")  # a deep copy shares the engine and the state index

    documents: list[Document] = Field(default_factory=list, repr=False)
    """The corpus, as LangChain Documents; each is chunked by the engine, its id and metadata copied to every chunk."""
    index: Any = Field(default=None, exclude=True, repr=False)
    """A prebuilt index with ``rank(question, k=...)``, used instead of ``documents``; its ``engine`` serves the handoff."""
    k: int = 4
    """How many chunks to return; ``invoke(question, k=...)`` overrides it for one call."""
    metadata_key: str = DEFAULT_METADATA_KEY
    """The metadata key the scores go under (a dict: see docs/langchain.md, 'What the metadata means')."""
    relevance_score: bool = False
    """Also set ``metadata["relevance_score"]``: a 0-1 score in rank order, above 0.5 exactly for answering chunks."""

    @field_validator("documents", mode="before")
    @classmethod
    def _as_documents(cls, value: Any) -> list[Document]:
        if value is None or (isinstance(value, list) and not value):
            return []
        return as_langchain_documents(value)[0]

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
            own = getattr(self.index, "engine", None)
            if self.engine_ is not None and own is not None and own is not self.engine_:
                raise ValueError("engine / index: the index was built on another engine; give the index alone")
            if self.engine_ is None and isinstance(own, OPRM):  # .engine is the index's, never a model loaded beside it
                self.engine_ = own
                self.model = self.model or own.name
            return self
        if not self.documents:
            raise ValueError("documents: expected at least one non-empty Document (or an index=), got none")
        check_metadata_key(self.documents, self.metadata_key)
        return self

    def __getstate__(self) -> dict[Any, Any]:
        """As for every class here (the engine is left out, loaded again where unpickled); a state index refuses."""
        if isinstance(getattr(self.index, "engine", None), OPRM):
            raise TypeError(
                "cannot pickle OverflowRetriever built on a state index (index=): it holds model states in memory "
                "with its engine; save it (retriever.index.save(folder)) and, where it is needed, build "
                "OverflowRetriever(index=StateIndex.load(folder, engine))"
            )
        return super().__getstate__()

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        engine: OPRM | None = None,
        metadatas: Iterable[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> OverflowRetriever:
        """A retriever over ``texts`` (with ``metadatas`` in the same order); ``kwargs`` as for :meth:`from_documents`."""
        texts = list(texts)
        metas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        if len(metas) != len(texts):
            raise ValueError(f"metadatas: expected one per text ({len(texts)}), got {len(metas)}")
        docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metas, strict=True)]
        return cls.from_documents(docs, engine, **kwargs)

    @classmethod
    def from_documents(
        cls, documents: Iterable[Any], engine: OPRM | None = None, *, index: bool = False, **kwargs: Any
    ) -> OverflowRetriever:
        """A retriever over ``documents`` (LangChain Documents, a text splitter's output, or anything Document-like).

        ``index=True`` builds a state index (``engine.index(...)``: every chunk's state computed once, now) and ranks
        over it, so each question feeds only the question; ``retriever.index.save(path)`` persists it, and the
        Documents' ids and metadata come back from it. Without ``engine``, ``model=`` / ``engine_kwargs=`` in
        ``kwargs`` (or neither: the bundled model) name the model, loaded through the shared loader.
        """
        if not index:
            if engine is not None:
                kwargs["engine"] = engine
            return cls(documents=list(documents), **kwargs)
        if engine is None:
            engine = load_engine(kwargs.pop("model", None), kwargs.pop("engine_kwargs", None))
        docs, _ = as_langchain_documents(documents)
        if not docs:
            raise InputError("documents: expected at least one non-empty Document, got none")
        key = kwargs.get("metadata_key", DEFAULT_METADATA_KEY)
        check_metadata_key(docs, key)
        built = engine.index([to_core(d, key) for d in docs])
        return cls(index=built, **kwargs)

    # -- querying -------------------------------------------------------------------------------------------------------
    def _scoring_engine(self) -> OPRM | None:
        """The engine whose cache receives the top states: the index's own, or this retriever's."""
        if self.index is not None:
            engine = getattr(self.index, "engine", None)
            return engine if isinstance(engine, OPRM) else None
        return self.engine

    def _core(self) -> list[tuple[str, dict[str, Any]]]:
        """The documents as the engine takes them (read on every call: ``documents`` may have been changed since)."""
        return [to_core(d, self.metadata_key) for d in self.documents]

    def rank(self, query: str, k: int | None = None) -> Ranking:
        """The engine's full :class:`overflow_core.Ranking` of the top ``k`` chunks (timings and token counts included)."""
        k = self.k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k: expected a positive number of chunks, got {k!r}")
        engine = self._scoring_engine()
        check_query(engine, query)
        if self.index is not None:
            ranking: Ranking = self.index.rank(query, k=k)
        else:
            assert engine is not None  # documents path: the engine is this retriever's
            ranking = engine.rank(query, self._core(), k=k)
        if engine is not None:
            _handoff.remember(engine, query, ranking.scores[:k])  # their states are in the engine's cache now
        return ranking

    def to_documents(self, scores: Iterable[ChunkScore]) -> list[Document]:
        """Scored chunks as LangChain Documents (ids and metadata of their sources, scores under ``metadata_key``)."""
        engine = self._scoring_engine()
        criterion = engine.config.criterion if engine is not None else "entropy"
        idk_filter = engine.config.idk_filter if engine is not None else True
        return [
            to_document(
                s,
                key=self.metadata_key,
                relevance=relevance_score(s, criterion=criterion, idk_filter=idk_filter)
                if self.relevance_score
                else None,
            )
            for s in scores
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return self.to_documents(self.rank(query, k).scores)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        ranking = await run_in_executor(None, self.rank, query, k)  # the prefill runs in a worker thread
        return self.to_documents(ranking.scores)
