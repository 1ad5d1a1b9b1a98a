"""OverflowRerank: re-rank the nodes of any retriever by the model's own next-token entropy (OPRM)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.llms.overflow.loading import shared_engine, split_settings
from llama_index.retrievers.overflow.nodes import RETRIEVAL_SCORE_KEY, question_of, ranking_to_nodes, to_pieces

from overflow_core import OPRM

__all__ = ["OverflowRerank"]

logger = logging.getLogger(__name__)
dispatcher = instrument.get_dispatcher(__name__)


class OverflowRerank(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes the model is surest about, best first, with ``score = -entropy`` (minus 1000 on abstainers).

    Each node's LLM text is scored as ``prompt + node + question`` in one batched prefill; nodes whose first answer
    token starts "not found" go last. ``oprm_entropy``, ``oprm_rank``, ``oprm_idk`` and ``oprm_not_found_prob`` go into
    the metadata, hidden from the LLM. A node longer than one engine chunk is cut into pieces and comes back piece by
    piece (with ``ref_doc_id`` and character offsets, see :mod:`llama_index.retrievers.overflow.nodes`), unless
    ``whole_nodes=True``: then ``top_n`` counts the nodes given, each returned whole, once, scored by its best chunk.
    Nodes without text are skipped with a warning. The states of the ``top_n`` prompts stay in the engine's state cache
    for an :class:`~llama_index.llms.overflow.OverflowLLM`. Emits LlamaIndex's ``ReRankStartEvent`` / ``ReRankEndEvent``.

    Args:
        engine: the OPRM engine (or use :meth:`from_pretrained`).
        top_n: how many to keep.
        keep_retrieval_score: keep each node's incoming score in ``metadata["retrieval_score"]`` (hidden from the LLM).
        whole_nodes: count and return the nodes given, not their chunks.

    Example:
        >>> rerank = OverflowRerank(engine, top_n=1)  # doctest: +SKIP
        >>> query_engine = RetrieverQueryEngine.from_args(any_retriever, llm=llm, node_postprocessors=[rerank])  # doctest: +SKIP
    """

    model_config = ConfigDict(extra="forbid")

    top_n: int = Field(default=2, description="How many nodes to keep.", gt=0)
    keep_retrieval_score: bool = Field(default=False, description="Keep the incoming score as 'retrieval_score'.")
    whole_nodes: bool = Field(default=False, description="top_n counts the nodes given, returned whole.")
    _engine: OPRM = PrivateAttr()

    def __init__(self, engine: OPRM, top_n: int = 2, **kwargs: Any) -> None:
        if isinstance(engine, (str, Path)) or not hasattr(engine, "rank"):  # a path where the engine goes
            raise TypeError(
                f"engine: expected an overflow_core.OPRM (or use OverflowRerank.from_pretrained(path)), got "
                f"{type(engine).__name__}"
            )
        super().__init__(top_n=top_n, **kwargs)  # type: ignore[call-arg]  # pydantic fields (mypy runs without the plugin)
        self._engine = engine

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, **kwargs: Any) -> OverflowRerank:
        """Load a model (``None``: the bundled one) through the core's loader and re-rank with it.

        Keywords are the re-ranker's options (``top_n``, ``keep_retrieval_score``, ``whole_nodes``) or settings of the
        engine (whatever :meth:`OPRM.from_pretrained` takes); anything else raises ``TypeError``. With the same model
        and engine settings it shares its engine with ``OverflowLLM.from_pretrained``.

        Example:
            >>> rerank = OverflowRerank.from_pretrained(top_n=1)  # doctest: +SKIP
        """
        own, settings = split_settings("OverflowRerank.from_pretrained", kwargs, set(cls.model_fields))
        return cls(shared_engine(name_or_path, **settings), **own)

    @classmethod
    def class_name(cls) -> str:
        return "OverflowRerank"

    @property
    def engine(self) -> OPRM:
        return self._engine

    @dispatcher.span
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("query_bundle: expected the query to re-rank for, got None")
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self._engine.name)
        )
        reranked = self._rerank(nodes, question_of(query_bundle.query_str))
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    def _rerank(self, nodes: list[NodeWithScore], question: str) -> list[NodeWithScore]:
        if not nodes:
            return []
        try:
            pieces = to_pieces(self._engine, [n.node for n in nodes], what="nodes to re-rank")
        except ValueError:  # every node was empty (each one warned about)
            return []
        extra = {i: {RETRIEVAL_SCORE_KEY: n.score} for i, n in enumerate(nodes)} if self.keep_retrieval_score else None
        if self.whole_nodes:
            ranking = self._engine.rank(question, pieces.documents)
            return ranking_to_nodes(ranking, pieces, top=self.top_n, whole_nodes=[n.node for n in nodes], extra=extra)
        ranking = self._engine.rank(question, pieces.documents, k=self.top_n)
        return ranking_to_nodes(ranking, pieces, extra=extra)
