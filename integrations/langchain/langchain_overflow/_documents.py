"""Documents in and out: any Document-like input as a LangChain Document, and a scored chunk as a LangChain Document.

Translation only. Inputs keep their ``id`` and every metadata field; what Overflow adds goes under one namespaced key
(``metadata["overflow"]`` by default) and, on request, under ``relevance_score``. Empty documents are skipped with a
warning instead of failing the whole call.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.documents import Document

from overflow_core import ChunkScore
from overflow_core.errors import InputError

__all__ = [
    "DEFAULT_METADATA_KEY",
    "SCORE_FIELDS",
    "EmptyDocumentWarning",
    "as_langchain_documents",
    "relevance_score",
    "scores_metadata",
    "to_core",
    "to_document",
]

DEFAULT_METADATA_KEY = "overflow"
SCORE_FIELDS = (
    "score", "entropy", "top_prob", "not_found_prob", "rank", "not_found", "start", "end", "doc_index", "chunk_index",
)  # fmt: skip
# The LangChain id of a document travels to the engine (and into a saved state index) in its chunks' metadata under
# this key, and comes back out as ``Document.id``; it never shows in a returned Document's metadata.
_ID_KEY = "__langchain_document_id__"
_ACCEPTED = (
    "a LangChain Document, a string, a (text, metadata) pair, a dict with 'page_content' or 'text' (and 'metadata'), "
    "or an object with page_content or text and metadata"
)


class EmptyDocumentWarning(UserWarning):
    """Documents without text were skipped (they cannot be scored; the rest of the call goes on)."""


def _one(doc: Any, where: str) -> Document:
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, str):
        return Document(page_content=doc)
    text: Any
    metadata: Any
    doc_id: Any = None
    if isinstance(doc, tuple) and len(doc) == 2:
        text, metadata = doc
    elif isinstance(doc, Mapping):
        text = doc.get("page_content", doc.get("text"))
        metadata, doc_id = doc.get("metadata") or {}, doc.get("id")
    elif hasattr(doc, "page_content") or hasattr(doc, "text"):
        text = getattr(doc, "page_content", None)
        if text is None:
            text = getattr(doc, "text", None)
        metadata = getattr(doc, "metadata", None) or {}
        doc_id = getattr(doc, "id", None) or getattr(doc, "id_", None)
    else:
        raise InputError(f"{where}: expected {_ACCEPTED}; got {type(doc).__name__}")
    if not isinstance(text, str):
        raise InputError(f"{where}: expected its text to be a string, got {type(text).__name__}")
    if not isinstance(metadata, Mapping):
        raise InputError(f"{where}: expected its metadata to be a mapping, got {type(metadata).__name__}")
    return Document(page_content=text, metadata=dict(metadata), id=None if doc_id is None else str(doc_id))


def as_langchain_documents(documents: Any, *, what: str = "documents") -> tuple[list[Document], list[int]]:
    """``documents`` (one Document-like or an iterable of them) as LangChain Documents, empty ones left out.

    Returns the non-empty documents and the positions of the skipped ones; warns :class:`EmptyDocumentWarning` naming
    those positions. LangChain Documents come back as they are (same objects); others are converted, keeping their id.
    """
    if documents is None:
        raise InputError(f"{what}: expected {_ACCEPTED}, or a list of them; got None")
    pair = isinstance(documents, tuple) and len(documents) == 2 and isinstance(documents[0], str)
    single = pair or isinstance(documents, (str, Document, Mapping)) or hasattr(documents, "page_content")
    items: Iterable[Any] = [documents] if single else documents
    if not isinstance(items, Iterable):
        raise InputError(f"{what}: expected {_ACCEPTED}, or a list of them; got {type(documents).__name__}")
    kept: list[Document] = []
    skipped: list[int] = []
    for i, item in enumerate(items):
        doc = _one(item, f"{what}[{i}]")
        if doc.page_content.strip():
            kept.append(doc)
        else:
            skipped.append(i)
    if skipped:
        shown = ", ".join(f"{what}[{i}]" for i in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(
            f"{len(skipped)} empty document(s) skipped: {shown} (no text to score)", EmptyDocumentWarning, stacklevel=3
        )
    return kept, skipped


def _is_ours(value: Any) -> bool:
    return isinstance(value, Mapping) and {"entropy", "not_found", "rank"} <= set(value)


def check_metadata_key(docs: Sequence[Document], key: str, *, what: str = "documents") -> None:
    """Refuse documents whose own metadata already uses ``key`` for something else (it would be overwritten)."""
    for i, doc in enumerate(docs):
        if key in doc.metadata and not _is_ours(doc.metadata[key]):
            raise InputError(
                f"{what}[{i}].metadata: already has a key {key!r}, where the scores would go; pass "
                f"metadata_key='another_name' so nothing of yours is overwritten"
            )


def to_core(doc: Document, key: str = DEFAULT_METADATA_KEY) -> tuple[str, dict[str, Any]]:
    """``(text, metadata)`` for the engine: the metadata without earlier Overflow scores, with the id carried along."""
    metadata = {k: v for k, v in doc.metadata.items() if not (k == key and _is_ours(v))}
    if doc.id is not None:
        metadata[_ID_KEY] = doc.id
    return doc.page_content, metadata


def relevance_score(score: ChunkScore, *, criterion: str, idk_filter: bool) -> float:
    """A 0-1 score in rank order: ``(confidence + answers) / 2``.

    ``confidence`` is ``exp(-entropy)`` (criterion ``"entropy"``), ``top_prob`` (``"max_prob"``) or
    ``1 - not_found_prob`` (``"not_found_prob"``), all in [0, 1]; ``answers`` is 1 unless the chunk abstains (and the
    engine's IDK filter is on). So answering chunks score above 0.5, abstaining ones at most 0.5, and a threshold at 0.5
    keeps exactly the chunks that answer.
    """
    if criterion == "max_prob":
        confidence = score.top_prob
    elif criterion == "not_found_prob":
        confidence = 1.0 - score.not_found_prob
    else:
        confidence = math.exp(-max(score.entropy, 0.0))
    answers = 0.0 if (score.idk and idk_filter) else 1.0
    return 0.5 * (min(max(confidence, 0.0), 1.0) + answers)


def scores_metadata(score: ChunkScore) -> dict[str, Any]:
    """What Overflow reports about one scored chunk (the value of ``metadata["overflow"]``)."""
    chunk = score.chunk
    return {
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


def to_document(
    score: ChunkScore,
    *,
    key: str = DEFAULT_METADATA_KEY,
    relevance: float | None = None,
) -> Document:
    """A scored chunk as a LangChain Document.

    The chunk's text, its source document's id and metadata, and the scores under ``metadata[key]`` (plus
    ``metadata["relevance_score"]`` when ``relevance`` is given).
    """
    metadata = dict(score.chunk.metadata)
    doc_id = metadata.pop(_ID_KEY, None)
    metadata[key] = scores_metadata(score)
    if relevance is not None:
        metadata["relevance_score"] = relevance
    return Document(page_content=score.chunk.text, metadata=metadata, id=None if doc_id is None else str(doc_id))
