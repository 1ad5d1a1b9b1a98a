"""Chunking: documents -> chunks of at most ``chunk_tokens`` tokens, cut at paragraph or sentence ends where possible.

Chunks never mix documents and remember their document and character span. A chunk's ids are always the tokenizer's
encoding of the chunk's text on its own, so whoever re-encodes a chunk's text (a framework adapter, a chat model, the state
index) gets the same ids, and the same state. Pure Python over the tokenizer; no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from overflow_core.errors import InputError
from overflow_core.types import Chunk, Document

__all__ = ["chunk_documents", "encode_text"]

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|\n")


def encode_text(tokenizer: Any, text: str) -> tuple[int, ...]:
    """The ids of ``text`` alone, without special tokens."""
    return tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])


def _boundaries(text: str, pattern: re.Pattern[str]) -> list[int]:
    return [m.end() for m in pattern.finditer(text)]


def _best_cut(start: int, limit: int, paragraphs: list[int], sentences: list[int]) -> int:
    """The end of the chunk that starts at ``start``: the last paragraph end in the second half of the window, else the
    last sentence end in its last two thirds, else ``limit`` (a token boundary)."""
    span = limit - start
    for candidates, fraction in ((paragraphs, 0.5), (sentences, 0.33)):
        cut = max((b for b in candidates if start + span * fraction <= b <= limit), default=None)
        if cut is not None:
            return cut
    return limit


def _chunk_one(
    tokenizer: Any, doc: Document, doc_index: int, first_index: int, chunk_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    text = doc.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]  # type: ignore[misc]
    paragraphs, sentences = _boundaries(text, _PARAGRAPH), _boundaries(text, _SENTENCE)
    chunks: list[Chunk] = []
    token = 0  # index of the first token of the next chunk
    while token < len(offsets):
        start = offsets[token][0]
        last = min(token + chunk_tokens, len(offsets)) - 1
        limit = offsets[last][1] if last + 1 >= len(offsets) else offsets[last + 1][0]
        end = len(text) if last + 1 >= len(offsets) else _best_cut(start, limit, paragraphs, sentences)
        # strip surrounding whitespace from the span, then encode the chunk's text on its own
        while start < end and text[start].isspace():
            start += 1
        stripped_end = end
        while stripped_end > start and text[stripped_end - 1].isspace():
            stripped_end -= 1
        piece = text[start:stripped_end]
        ids = encode_text(tokenizer, piece)
        while len(ids) > chunk_tokens:  # standalone encoding can differ by a token or two at the edges
            piece_enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            stripped_end = start + piece_enc["offset_mapping"][chunk_tokens - 1][1]
            piece = text[start:stripped_end]
            ids = encode_text(tokenizer, piece)
            end = stripped_end
        if piece:
            chunks.append(
                Chunk(
                    index=first_index + len(chunks),
                    doc_index=doc_index,
                    text=piece,
                    start=start,
                    end=stripped_end,
                    ids=ids,
                    metadata=dict(doc.metadata),
                )
            )
        # the next chunk starts at the first token at or after ``end``, stepped back by the overlap
        nxt = next((i for i in range(token, len(offsets)) if offsets[i][0] >= end), len(offsets))
        if overlap_tokens and nxt < len(offsets):
            nxt = max(token + 1, nxt - overlap_tokens)
        token = max(nxt, token + 1)
    return chunks


def chunk_documents(
    tokenizer: Any, documents: Sequence[Document], *, chunk_tokens: int, overlap_tokens: int = 0
) -> list[Chunk]:
    """Cut every document into chunks of at most ``chunk_tokens`` tokens.

    Args:
        tokenizer: the model's own (fast) tokenizer; it must return offsets.
        documents: the documents, in order; ``Chunk.doc_index`` refers to this order.
        chunk_tokens: the most tokens of text in one chunk.
        overlap_tokens: how many tokens of the end of a chunk the next chunk of the same document repeats.

    Returns:
        The chunks of all documents in order, ``Chunk.index`` counting from 0.

    Raises:
        InputError: no documents, or a document that is empty or only whitespace.

    Example:
        >>> chunks = chunk_documents(tok, [Document("One. Two.", {"source": "a.txt"})], chunk_tokens=256)  # doctest: +SKIP
    """
    if not documents:
        raise InputError("documents: expected at least one document, got none")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("tokenizer: expected a fast tokenizer (offsets are needed for chunk spans)")
    chunks: list[Chunk] = []
    for i, doc in enumerate(documents):
        if not doc.text.strip():
            where = f" ({doc.source})" if doc.source else ""
            raise InputError(f"documents[{i}]{where}: expected text, got an empty document")
        chunks.extend(_chunk_one(tokenizer, doc, i, len(chunks), chunk_tokens, overlap_tokens))
    return chunks
