"""OverflowRerank: re-rank the nodes of any retriever by the model's own next-token entropy (OPRM)."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.retrievers.overflow.nodes import ranking_to_nodes, to_documents

from overflow_core import OPRM

__all__ = ["OverflowRerank"]


class OverflowRerank(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes the model is surest about, best first, with ``score = -entropy`` (minus 1000 on abstainers).

    Each node's LLM text is scored as ``prompt + node + question`` in one batched prefill; nodes whose first answer
    token starts "not found" go last. ``oprm_entropy``, ``oprm_rank``, ``oprm_idk`` and ``oprm_not_found_prob`` go into
    the metadata, hidden from the LLM. A node longer than one engine chunk is cut by the engine and comes back chunk by
    chunk. The states of the ``top_n`` prompts stay in the engine's state cache for an
    :class:`~llama_index.llms.overflow.OverflowLLM`.

    Example:
        >>> rerank = OverflowRerank(engine=engine, top_n=1)  # doctest: +SKIP
        >>> query_engine = retriever_query_engine(any_retriever, llm, node_postprocessors=[rerank])  # doctest: +SKIP
    """

    top_n: int = Field(default=2, description="How many nodes to keep.", gt=0)
    _engine: OPRM = PrivateAttr()

    def __init__(self, engine: OPRM, top_n: int = 2, **kwargs: Any) -> None:
        super().__init__(top_n=top_n, **kwargs)  # type: ignore[call-arg]  # a pydantic field (mypy runs without the plugin)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "OverflowRerank"

    @property
    def engine(self) -> OPRM:
        return self._engine

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("query_bundle: expected the query to re-rank for, got None")
        if not nodes:
            return []
        keys = [str(i) for i in range(len(nodes))]  # by position: two retrievers may return the same node id
        documents = to_documents([n.node for n in nodes], keys)
        ranking = self._engine.rank(query_bundle.query_str, documents, k=self.top_n)
        return ranking_to_nodes(ranking, {key: n.node for key, n in zip(keys, nodes, strict=True)})
