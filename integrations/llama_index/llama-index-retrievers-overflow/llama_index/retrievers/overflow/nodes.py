"""Translation between LlamaIndex nodes and Overflow's documents and rankings.

The rule that keeps the state handoff working: the text the model scores is the text the LLM will see, i.e. a node's
``get_content(metadata_mode=MetadataMode.LLM)``.

- A node whose LLM text fits one engine chunk is scored whole and comes back as an annotated copy of itself.
- A longer node is cut here, before scoring, into pieces of its text (``node.text``, never the metadata header) short
  enough that the metadata header the LLM sees plus the piece still fit one chunk. Each piece comes back as a
  ``TextNode`` with the node's metadata and exclusions (so its LLM text, header included, is exactly what the model
  scored), ``start_char_idx`` / ``end_char_idx`` into the source document's text, a ``SOURCE`` relationship to that
  document (so ``ref_doc_id`` is the document's id) and a ``PARENT`` relationship to the node it was cut from when that
  node was itself a piece of a document.
- Empty nodes are skipped with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, NodeWithScore, TextNode

from overflow_core import OPRM, ChunkScore, Document, Ranking
from overflow_core.chunking import chunk_documents, encode_text

__all__ = [
    "ENTROPY_KEY",
    "IDK_KEY",
    "NOT_FOUND_PROB_KEY",
    "RANK_KEY",
    "RETRIEVAL_SCORE_KEY",
    "SCORE_KEYS",
    "Pieces",
    "is_abstaining",
    "node_text",
    "question_of",
    "ranking_to_nodes",
    "to_pieces",
]

logger = logging.getLogger(__name__)

ENTROPY_KEY = "oprm_entropy"  # next-token entropy of the chunk's prompt (lower is more confident)
RANK_KEY = "oprm_rank"  # 0 is the best chunk
IDK_KEY = "oprm_idk"  # the model's most likely first token starts the not-found answer
NOT_FOUND_PROB_KEY = "oprm_not_found_prob"  # probability that the answer starts with the not-found phrase
RETRIEVAL_SCORE_KEY = "retrieval_score"  # the score a node had before re-ranking (OverflowRerank(keep_retrieval_score))
SCORE_KEYS = (ENTROPY_KEY, RANK_KEY, IDK_KEY, NOT_FOUND_PROB_KEY, RETRIEVAL_SCORE_KEY)
_SOURCE = "source"  # the core's metadata key naming a document; here it holds the piece's key
_MARGIN = 4  # tokens kept free where header and piece meet (merges at the seam may differ by a token)
# RetrieverTool turns a call with one `input` argument into the query "\ninput is <question>\n"
_TOOL_QUERY = re.compile(r"\n?input is (.*)\n", re.S)


def node_text(node: BaseNode) -> str:
    """What an LLM is shown for ``node`` (its text plus the metadata it does not exclude from the LLM)."""
    return node.get_content(metadata_mode=MetadataMode.LLM)


def is_abstaining(node: NodeWithScore) -> bool:
    """True when the engine flagged ``node`` as not holding the answer (``False`` for nodes it did not score)."""
    return bool(node.node.metadata.get(IDK_KEY, False))


def question_of(query_str: str) -> str:
    """The question in a query string: LlamaIndex's ``RetrieverTool`` sends ``"\\ninput is <question>\\n"`` for an agent's
    ``{"input": question}`` call, and the model must score the question, not that wrapper."""
    match = _TOOL_QUERY.fullmatch(query_str)
    return match.group(1) if match else query_str


@dataclass
class Pieces:
    """What the engine scores for a list of nodes: one core document per piece, and the node each piece stands for."""

    documents: list[Document]
    nodes: dict[str, BaseNode]  # piece key -> the node returned when the piece is retrieved
    owner: dict[str, int]  # piece key -> position of the input node it came from


def _annotated(node: BaseNode, extra: Mapping[str, Any]) -> BaseNode:
    return node.model_copy(
        update={
            "metadata": {**node.metadata, **extra},
            "excluded_llm_metadata_keys": _merge(node.excluded_llm_metadata_keys, SCORE_KEYS),
            "excluded_embed_metadata_keys": _merge(node.excluded_embed_metadata_keys, SCORE_KEYS),
        }
    )


def _merge(keys: Sequence[str], extra: Sequence[str]) -> list[str]:
    return [*keys, *(k for k in extra if k not in keys)]


def _body(node: BaseNode) -> str:
    """The node's own text, unstripped (what ``start_char_idx`` counts in), without any metadata."""
    text = getattr(node, "text", None)
    return text if isinstance(text, str) else node.get_content(metadata_mode=MetadataMode.NONE)


def _fits(engine: OPRM, text: str) -> bool:
    """Whether ``text`` is at most one engine chunk (the engine then scores it whole)."""
    return len(encode_text(engine.tokenizer, text.strip())) <= engine.config.chunk_tokens


def _piece_node(node: BaseNode, text: str, start: int, end: int, hide_header: bool) -> TextNode:
    """A piece ``node.text[start:end]`` as a node of its own, with the node's metadata and lineage."""
    source = node.source_node
    base = getattr(node, "start_char_idx", None) if source is not None else 0
    relationships = {NodeRelationship.SOURCE: source if source is not None else node.as_related_node_info()}
    if source is not None:
        relationships[NodeRelationship.PARENT] = node.as_related_node_info()
    return TextNode(
        id_=f"{node.node_id}:{start}-{end}",
        text=text,
        metadata=dict(node.metadata),
        excluded_llm_metadata_keys=list(node.metadata) if hide_header else list(node.excluded_llm_metadata_keys),
        excluded_embed_metadata_keys=list(node.excluded_embed_metadata_keys),
        metadata_template=node.metadata_template,
        metadata_separator=node.metadata_separator,
        text_template=getattr(node, "text_template", TextNode.model_fields["text_template"].default),
        start_char_idx=None if base is None else base + start,
        end_char_idx=None if base is None else base + end,
        relationships=relationships,
    )


def _cut(engine: OPRM, node: BaseNode, index: int) -> list[TextNode]:
    """Cut a node too long for one chunk into pieces whose LLM text (header + piece) each fits one chunk."""
    body = _body(node)
    header = node_text(_piece_node(node, "", 0, 0, hide_header=False))
    header_tokens = len(encode_text(engine.tokenizer, header)) if header.strip() else 0
    budget = engine.config.chunk_tokens - header_tokens - (_MARGIN if header_tokens else 0)
    hide = budget < engine.config.chunk_tokens // 2
    if hide:
        logger.warning(
            "nodes[%d] (id %r): its metadata header takes %d of chunk_tokens=%d tokens; the pieces cut from it are "
            "scored and shown to the LLM without it (exclude metadata keys from the LLM, or raise chunk_tokens)",
            index,
            node.node_id,
            header_tokens,
            engine.config.chunk_tokens,
        )
        budget = engine.config.chunk_tokens
    overlap = min(engine.config.overlap_tokens, budget - 1)
    chunks = chunk_documents(engine.tokenizer, [Document(body)], chunk_tokens=budget, overlap_tokens=overlap)
    pieces = []
    for chunk in chunks:
        piece = _piece_node(node, chunk.text, chunk.start, chunk.end, hide_header=hide)
        if _fits(engine, node_text(piece)):
            pieces.append(piece)
            continue
        # the seam merged worse than the margin allows (or the chunker re-cuts its own chunks): the engine's own cut
        # of this piece, without the header
        for sub in engine.chunk([chunk.text]):
            start = chunk.start + sub.start
            pieces.append(_piece_node(node, sub.text, start, start + len(sub.text), hide_header=True))
    return pieces


def to_pieces(engine: OPRM, nodes: Sequence[BaseNode], *, what: str = "nodes") -> Pieces:
    """The documents the engine scores for ``nodes`` (see the module docstring); empty nodes are skipped with a warning.

    Raises:
        ValueError: every node is empty.
    """
    documents: list[Document] = []
    by_key: dict[str, BaseNode] = {}
    owner: dict[str, int] = {}
    for i, node in enumerate(nodes):
        text = node_text(node)
        if not text.strip():
            logger.warning("%s[%d] (id %r) has no text to score; skipped", what, i, node.node_id)
            continue
        parts: list[BaseNode] = [node] if _fits(engine, text) else list(_cut(engine, node, i))
        for j, part in enumerate(parts):
            key = f"{i}" if len(parts) == 1 and part is node else f"{i}:{j}"
            documents.append(Document(node_text(part), {_SOURCE: key}))
            by_key[key] = part
            owner[key] = i
    if not documents:
        raise ValueError(f"{what}: expected at least one node with text to score, got {len(nodes)} empty")
    return Pieces(documents=documents, nodes=by_key, owner=owner)


def _values(score: ChunkScore, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        ENTROPY_KEY: score.entropy,
        RANK_KEY: score.rank,
        IDK_KEY: score.idk,
        NOT_FOUND_PROB_KEY: score.not_found_prob,
        **extra,
    }


def _scored(node: BaseNode, score: ChunkScore, extra: Mapping[str, Any]) -> NodeWithScore:
    chunk, values = score.chunk, _values(score, extra)
    if chunk.text == node_text(node).strip():  # the piece was scored whole: hand it back, annotated
        return NodeWithScore(node=_annotated(node, values), score=score.score)
    # the engine cut the piece after all (it does not where chunking is idempotent: to_pieces sized every piece to one
    # chunk): the chunk is what the model read; the header is dropped from its text, its lineage and offsets are kept
    header = node_text(_piece_node(node, "", 0, 0, hide_header=False))
    text = chunk.text[len(header) :].lstrip() if header.strip() and chunk.text.startswith(header) else chunk.text
    at = _body(node).find(text)
    base = getattr(node, "start_char_idx", None) if node.source_node is not None else 0
    relationships = {NodeRelationship.SOURCE: node.source_node or node.as_related_node_info()}
    parent = node.parent_node or (node.as_related_node_info() if node.source_node is not None else None)
    if parent is not None:
        relationships[NodeRelationship.PARENT] = parent
    out = TextNode(
        id_=f"{node.node_id}:{chunk.start}-{chunk.end}",
        text=text,
        metadata={**node.metadata, **values},
        excluded_llm_metadata_keys=_merge(list(node.metadata), SCORE_KEYS),
        excluded_embed_metadata_keys=_merge(node.excluded_embed_metadata_keys, SCORE_KEYS),
        start_char_idx=base + at if base is not None and at >= 0 else None,
        end_char_idx=base + at + len(text) if base is not None and at >= 0 else None,
        relationships=relationships,
    )
    return NodeWithScore(node=out, score=score.score)


def ranking_to_nodes(
    ranking: Ranking,
    pieces: Pieces,
    *,
    top: int | None = None,
    whole_nodes: Sequence[BaseNode] | None = None,
    extra: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[NodeWithScore]:
    """``NodeWithScore`` per ranked chunk, best first; ``score`` is ``ChunkScore.score`` (``-entropy``, minus 1000 on
    abstainers; higher is better).

    Args:
        top: keep this many (all when None).
        whole_nodes: the input nodes; when given, ``top`` counts them: each input node appears once, whole, with the
            scores of its best chunk.
        extra: more metadata per input node position (hidden from the LLM like the scores).
    """
    out: list[NodeWithScore] = []
    seen: set[int] = set()
    for score in ranking.scores:
        if top is not None and len(out) >= top:
            break
        key: Any = score.chunk.metadata.get(_SOURCE)
        if key not in pieces.nodes:
            raise KeyError(f"ranked chunk {score.chunk.index}: its source {key!r} names no node of this call")
        position = pieces.owner[key]
        more = (extra or {}).get(position, {})
        if whole_nodes is None:
            out.append(_scored(pieces.nodes[key], score, more))
        elif position not in seen:
            seen.add(position)
            whole = _annotated(whole_nodes[position], _values(score, more))
            out.append(NodeWithScore(node=whole, score=score.score))
    return out
