"""Translation between LlamaIndex nodes and Overflow's documents and rankings.

The rule that keeps the state handoff working: the text the model scores is the text the LLM will see, i.e. a node's
``get_content(metadata_mode=MetadataMode.LLM)``. A node whose LLM text is exactly one engine chunk comes back as a copy of
itself; a longer node is cut by the engine's chunker and each chunk comes back as a new ``TextNode`` whose LLM text is the
chunk text (its metadata is kept but hidden from the LLM, and its ``SOURCE`` relationship points at the node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, NodeWithScore, TextNode

from overflow_core import ChunkScore, Document, Ranking

__all__ = [
    "ENTROPY_KEY",
    "IDK_KEY",
    "NOT_FOUND_PROB_KEY",
    "RANK_KEY",
    "SCORE_KEYS",
    "is_abstaining",
    "node_text",
    "ranking_to_nodes",
    "to_documents",
]

ENTROPY_KEY = "oprm_entropy"  # next-token entropy of the chunk's prompt (lower is more confident)
RANK_KEY = "oprm_rank"  # 0 is the best chunk
IDK_KEY = "oprm_idk"  # the model's most likely first token starts the not-found answer
NOT_FOUND_PROB_KEY = "oprm_not_found_prob"  # probability that the answer starts with the not-found phrase
SCORE_KEYS = (ENTROPY_KEY, RANK_KEY, IDK_KEY, NOT_FOUND_PROB_KEY)
_SOURCE = "source"  # the core's metadata key naming a document; here it holds the node's key


def node_text(node: BaseNode) -> str:
    """What an LLM is shown for ``node`` (its text plus the metadata it does not exclude from the LLM)."""
    return node.get_content(metadata_mode=MetadataMode.LLM)


def is_abstaining(node: NodeWithScore) -> bool:
    """True when the engine flagged ``node`` as not holding the answer (``False`` for nodes it did not score)."""
    return bool(node.node.metadata.get(IDK_KEY, False))


def to_documents(nodes: Sequence[BaseNode], keys: Sequence[str]) -> list[Document]:
    """One core :class:`Document` per node, its LLM text, named by ``keys[i]`` (so chunks map back to nodes)."""
    documents = []
    for i, (node, key) in enumerate(zip(nodes, keys, strict=True)):
        text = node_text(node)
        if not text.strip():
            raise ValueError(f"nodes[{i}] (id {node.node_id!r}): expected text to score, got an empty node")
        documents.append(Document(text, {_SOURCE: key}))
    return documents


def _scored(node: BaseNode, score: ChunkScore) -> NodeWithScore:
    chunk = score.chunk
    extra = {
        ENTROPY_KEY: score.entropy,
        RANK_KEY: score.rank,
        IDK_KEY: score.idk,
        NOT_FOUND_PROB_KEY: score.not_found_prob,
    }
    if chunk.text == node_text(node):  # the node was scored whole: hand back the node itself, annotated
        out = node.model_copy(
            update={
                "metadata": {**node.metadata, **extra},
                "excluded_llm_metadata_keys": _merge(node.excluded_llm_metadata_keys, SCORE_KEYS),
                "excluded_embed_metadata_keys": _merge(node.excluded_embed_metadata_keys, SCORE_KEYS),
            }
        )
    else:  # the engine cut the node: the chunk is the unit the model scored and the LLM must see
        out = TextNode(
            id_=f"{node.node_id}:{chunk.start}-{chunk.end}",
            text=chunk.text,
            metadata={**node.metadata, **extra},
            excluded_llm_metadata_keys=_merge(list(node.metadata), SCORE_KEYS),
            excluded_embed_metadata_keys=_merge(node.excluded_embed_metadata_keys, SCORE_KEYS),
            relationships={NodeRelationship.SOURCE: node.as_related_node_info()},
        )
    return NodeWithScore(node=out, score=score.score)


def _merge(keys: Sequence[str], extra: Sequence[str]) -> list[str]:
    return [*keys, *(k for k in extra if k not in keys)]


def ranking_to_nodes(ranking: Ranking, nodes: Mapping[str, BaseNode]) -> list[NodeWithScore]:
    """``NodeWithScore`` per ranked chunk, best first; ``score`` is ``ChunkScore.score`` (``-entropy``, minus 1000 on
    abstainers; higher is better)."""
    out = []
    for score in ranking.scores:
        key: Any = score.chunk.metadata.get(_SOURCE)
        if key not in nodes:
            raise KeyError(f"ranked chunk {score.chunk.index}: its source {key!r} names no node of this retriever")
        out.append(_scored(nodes[key], score))
    return out
